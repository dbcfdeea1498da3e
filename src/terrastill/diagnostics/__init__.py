"""Does a segmentation model use long-range context? Effective receptive fields and recall of
hidden pixels by their distance to visible pixels of the same class."""
