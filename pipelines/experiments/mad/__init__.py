"""Self-consuming (MAD) loops on 2-D data with many independent runs trained at once (SIMS Sec. 4.2).

worlds: the real distributions p_r; training: batched base training and auxiliary fine-tuning;
loops: fully synthetic / synthetic augmentation / fresh-data loops with standard or SIMS training;
distance: Wasserstein distances to p_r; fig4: the |D_s| x omega sweep and its ratios;
pollution: the Fig. 5 study; shift: 2-D distribution shift; report: JSON and figures.
"""
