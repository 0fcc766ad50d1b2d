"""The preprocess stage's parts (:mod:`cmrops.stages.preprocess` runs them): the shard plan and
records (:mod:`.shards`), the decode of one sample - image, video or audio - and of a shard
(:mod:`.decode`), the encoders (:mod:`.embed`) and the merge (:mod:`.merge`).
"""

#: The stage's name, as its quarantine rows and metrics record it.
STAGE = "preprocess"
