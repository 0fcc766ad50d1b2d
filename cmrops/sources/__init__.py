"""Sources of image-caption pairs: one small module per kind, all streaming iterators.

Each source yields :class:`~cmrops.sources.base.RawItem` (a would-be sample) and
:class:`~cmrops.sources.base.Reject` (an input that cannot be one, with a reason code) records;
the collect stage stores, identifies, deduplicates and writes them.
"""

from cmrops.sources.base import RawItem, Reason, Record, Reject, Source
from cmrops.sources.coco import CocoSource
from cmrops.sources.folder import FolderSource
from cmrops.sources.manifest import ManifestSource
from cmrops.sources.synthetic import DefectRates, SyntheticConfig, SyntheticSource
from cmrops.sources.urls import DownloadParams, UrlsSource
from cmrops.sources.webdataset import WebDatasetSource, expand_shards

__all__ = [
    "CocoSource",
    "DefectRates",
    "DownloadParams",
    "FolderSource",
    "ManifestSource",
    "RawItem",
    "Reason",
    "Record",
    "Reject",
    "Source",
    "SyntheticConfig",
    "SyntheticSource",
    "UrlsSource",
    "WebDatasetSource",
    "expand_shards",
]
