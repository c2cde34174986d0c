"""The DPM network in PyTorch: DUSt3R/CroCo blocks and parameter names, two extra gated residual heads, presets
and checkpoints.

Contract (shared with training and the engines):

- ``build_model(preset, **overrides) -> DPMNet``; presets ``dust3r_vitl_512_dpt``, ``dust3r_vitl_224_linear``,
  ``dpm_small`` (the shipped CPU model), ``dpm_tiny`` (tests). ``DPMNet.config`` is a :class:`DPMConfig`
  (``to_dict()`` / ``DPMConfig.from_dict()``).
- ``DPMNet.forward(img1, img2, symmetric=None)``: img float32 (B, 3, H, W) from :func:`preprocess`, H and W
  multiples of ``config.patch_size``. Returns the eight maps of ``dpm_ros.ALL_POINT_MAP_NAMES`` (B, H, W, 3),
  ``conf_<name>`` (B, H, W) and ``motion_prob_1`` / ``motion_prob_2`` (B, H, W) in [0, 1] (the gates m of heads
  3 and 4 in Φ(I1, I2), for image 1's and image 2's pixels). ``symmetric=False`` (or ``model.symmetric = False``)
  runs only Φ(I1, I2): the first four maps. One call runs the encoder once for both images.
- ``DPMNet.forward_raw(...)`` (for the loss): everything above plus, for each cross-time map X
  (``p1_t2_pi1``, ``p2_t1_pi1``, and with symmetric ``p2_t1_pi2``, ``p1_t2_pi2``): ``delta_X`` (B, H, W, 3) and
  ``motion_logit_X`` (B, H, W) with ``X = S + sigmoid(motion_logit_X)[..., None] * delta_X``, where S is the
  same-time map of the same pixels and frame (``p1_t1_pi1`` for ``p1_t2_pi1``, ``p2_t2_pi1`` for ``p2_t1_pi1``,
  ``p2_t2_pi2`` for ``p2_t1_pi2``, ``p1_t1_pi2`` for ``p1_t2_pi2``). Use the logits with
  ``binary_cross_entropy_with_logits``; ``delta_X`` is the direct object-flow regression target's prediction
  (same units as the maps).
- Heads: ``downstream_head1`` -> ``p1_t1_pi1``, ``downstream_head2`` -> ``p2_t2_pi1`` (DUSt3R's, names exact),
  ``downstream_head3`` -> ``p1_t2_pi1``, ``downstream_head4`` -> ``p2_t1_pi1`` (same architecture, 5 output
  channels: delta xyz, confidence, motion logit). Fresh or loaded without heads 3/4: delta = 0 and m ≈ 0, so the
  cross-time maps equal the same-time maps exactly (the static, MonST3R-style baseline).
- ``preprocess(uint8 (B, H, W, 3) or (H, W, 3)) -> float32 (B, 3, H, W)``, ``(x / 255 - 0.5) / 0.5``.
- ``save_model(model, path, record=None)``: ``path`` (.safetensors) + ``path.with_suffix('.json')`` (config and
  training record); ``load_model(path, map_location='cpu') -> DPMNet``;
  ``load_dust3r_checkpoint(path, preset, **overrides) -> DPMNet`` for DUSt3R/MonST3R ``.pth`` (read with
  ``weights_only=True``) or ``.safetensors`` state dicts.
"""
from dpm_ros.model.checkpoint import (CheckpointMismatchError, load_dust3r_checkpoint, load_model, read_model_meta,
                                      save_model)
from dpm_ros.model.config import PRESETS, DPMConfig, preset_config
from dpm_ros.model.network import DPMNet, build_model, preprocess

__all__ = ["PRESETS", "CheckpointMismatchError", "DPMConfig", "DPMNet", "build_model", "load_dust3r_checkpoint",
           "load_model", "preprocess", "preset_config", "read_model_meta", "save_model"]
