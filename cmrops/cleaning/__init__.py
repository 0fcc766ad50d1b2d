"""Library of the clean stage: near-duplicate graphs, duplicate resolution, rule scoring.

* :mod:`~cmrops.cleaning.graph` - pairs within a Hamming radius (the Rust engine), components;
* :mod:`~cmrops.cleaning.dedup` - exact and near-duplicate images, one representative per group;
* :mod:`~cmrops.cleaning.scoring` - precision / recall of the rules on planted synthetic defects.
"""
