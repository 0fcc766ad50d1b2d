"""The evaluate stage's parts (:mod:`cmrops.stages.evaluate` runs them): its inputs - the
codes, the split, the relevance, the models found - checked against each other
(:mod:`.inputs`), and the protocol card with the tie conventions and metric definitions that
the metrics file states (:mod:`.card`). The metric kernels are :mod:`cmrops.metrics`.
"""
