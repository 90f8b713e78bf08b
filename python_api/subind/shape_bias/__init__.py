"""Shape-bias toolkit (Geirhos et al. 2019; the paper's §5): the 16
entry-level categories and their ImageNet classes (categories), stimulus
folders in Geirhos' layout (stimuli), classifiers and their preprocessing
(classifiers), a classifier's decisions (classify), shape bias and the
paper's cue-conflict metrics (evaluation), shape-only images by mean pooling
(pooling) and 16-class ImageNet from an ImageNet copy (imagenet16).  The
vision experiment and the shape-bias, mean-pool, imagenet16 and
shape-subnetwork commands use it; it knows none of them."""
