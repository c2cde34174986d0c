"""The closed-form geometry of dpm_theory.md on numpy arrays: intrinsics, motion masks, correspondences,
Procrustes, ego-motion (three forms), object motion and masks, flow. Pure numpy/scipy/OpenCV, no ROS, no torch.
Metrics live in ``dpm_ros.geometry.metrics``."""
from dpm_ros.geometry.camera import estimate_focal, image_centre, intrinsics, project, scale_intrinsics
from dpm_ros.geometry.flow import object_flow, scene_flow
from dpm_ros.geometry.masks import displacement_mask, motion_mask
from dpm_ros.geometry.matching import nearest_neighbours
from dpm_ros.geometry.motion import (EGO_METHODS, ego_motion, ego_motion_matched, ego_motion_pixel_aligned,
                                     ego_motion_pnp, motion_in_world, object_motion, sampling_step)
from dpm_ros.geometry.objects import split_objects
from dpm_ros.geometry.procrustes import rotation_angle_deg, to_matrix, umeyama, umeyama_ransac

__all__ = ["EGO_METHODS", "displacement_mask", "ego_motion", "ego_motion_matched", "ego_motion_pixel_aligned",
           "ego_motion_pnp", "estimate_focal", "image_centre", "intrinsics", "motion_in_world", "motion_mask",
           "nearest_neighbours", "object_flow", "object_motion", "project", "rotation_angle_deg", "sampling_step",
           "scale_intrinsics", "scene_flow", "split_objects", "to_matrix", "umeyama", "umeyama_ransac"]
