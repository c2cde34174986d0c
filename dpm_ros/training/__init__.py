"""Training and evaluation of the DPM network on synthetic pairs: data (``data``), the loss with Table 6's partial
supervision and the motion terms (``loss``), the training loop with exact resume (``trainer``) and the held-out
evaluation of Tables 7 and 8 (``evaluate``)."""
