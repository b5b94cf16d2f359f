"""Feature sets on disk: the manifest of inputs, the id, staging of a running extraction, the HDF5 file
with its typed record (``info``), the integrity gate every reader passes, and the cache folder.

What other stages and users import, in one place::

    from featcache import store
    with store.open_verified(path) as fs: fs.info.extractor.layer, fs.load(), fs.labels
"""

from featcache.store.featureset import (  # noqa: F401
    COMPRESSION,
    COMPRESSION_OPTS,
    FeatureSet,
    chunk_rows,
    encode_chunk,
    fletcher32,
    peek,  # noqa: F401
    view_numbers,
    write_feature_set,
    write_isolated,
)
from featcache.store.h5 import SUFFIX, read_attrs  # noqa: F401
from featcache.store.info import FeatureSetInfo  # noqa: F401
from featcache.store.integrity import check, open_verified, problems, verify  # noqa: F401
