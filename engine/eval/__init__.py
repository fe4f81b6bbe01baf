"""Evaluation: the paper's metrics and ablations on held-out procedural scenes (`spatia eval`).

`metrics` (PSNR, SSIM, LPIPS from local weights, Match Accuracy), `matching` (RoMa from local weights, OpenCV SIFT),
`suite` (scenes, closed loops, the variants of Tables 4-7, scoring), `report` (results.json, report.md, figures),
`cli`. The package uses the pipeline, the model and the world; nothing imports it. Importing it loads NumPy and
SciPy only: OpenCV, torch, matplotlib and the optional backends load when used.
"""
