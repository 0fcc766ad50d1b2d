"""Library of the split stage.

* :mod:`~cmrops.splitting.stratify` - iterative multi-label stratification of near-duplicate
  groups, placed by a seeded hash (stable when data is added);
* :mod:`~cmrops.splitting.audit` - the near-duplicate grouping and the leakage audit;
* :mod:`~cmrops.splitting.manifests` - the split as sorted sample-id lists with sha256s.
"""
