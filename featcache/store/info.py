"""What a feature set says about itself, as one typed record read and written here and nowhere else.

A feature-set file's HDF5 attributes are parsed once, where the file is opened (``FeatureSet.info``),
into a ``FeatureSetInfo``: the extraction settings it was made with (``ExtractConfig``), the extractor
that made the numbers (model, weights, cut, preprocessing), how files were decoded, the views recipe,
the manifest it covers, what the rows hold and where and how fast they were made. Every reader (fit,
audit, predict, sweep, reports, the CLI) reads these fields; ``to_attrs`` writes exactly the
attributes featcache has always written, so files, ids and cache hits are unchanged.

Older files lack some attributes (views, decode, the content hash version...): ``from_attrs`` gives
each one the value it had before the attribute existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from featcache.backbones.spec import Preprocess
from featcache.config.decode import Decode
from featcache.config.extract import ExtractConfig
from featcache.config.views import Views

FORMAT_VERSION = 1  # the file layout (featureset.py); bump when a reader of the old layout would misread a new file


@dataclass(frozen=True)
class Extractor:
    """The backbone cut that made the numbers, as recorded (its identity is ``FeatureSetInfo.key``)."""

    model: str  # as the user wrote it: vgg16, timm:resnet50, efficientnet_lite0
    family: str  # torchvision | timm | openclip | builtin
    arch: str
    weights: str  # the weights identity (enum, package file, file hash)
    weights_kind: str  # pretrained | none | file
    weights_path: str  # where a local weights file was ("" otherwise)
    layer: str
    pool: str
    preprocess: Preprocess
    feature_shape: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.model} {self.layer} pool={self.pool}"


@dataclass(frozen=True)
class Made:
    """Where, when and how fast the rows were made: recorded, never part of the id."""

    created: str = ""
    device: str = ""
    batch_size: int | None = None
    streams: int | None = None
    compiled: bool = False
    compile_error: str | None = None
    extract_seconds: float = 0.0
    images_per_second: float = 0.0
    versions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    """One file of a sharded extraction (``--shard I/N``): manifest entries ``start`` to ``stop``."""

    index: int
    count: int
    start: int
    stop: int


@dataclass(frozen=True)
class FeatureSetInfo:
    id: str
    config_id: str
    key: dict  # the canonical record the id hashes (extractor, decode, dtype, precision, views)
    extractor: Extractor
    decode: Decode
    dtype: str  # storage dtype
    precision: str  # of the forward pass: fp32 | fp16 | bf16
    views: Views
    config: ExtractConfig  # the settings as asked (data: the resolved folder), what predict and refresh rebuild from
    data_root: str
    manifest_sha256: str
    n_entries: int
    made: Made = field(default_factory=Made)
    shard: Shard | None = None
    merged_from: int | None = None  # shards ``featcache cache merge`` assembled it from
    # Set when the file is written (None while a feature set is being assembled):
    n_rows: int | None = None
    n_skipped: int | None = None
    content_sha256: str | None = None
    content_hash_version: int = 1  # files written before the hash was versioned: 1
    format: int = FORMAT_VERSION

    # -- what readers ask ---------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.extractor.model

    @property
    def layer(self) -> str:
        return self.extractor.layer

    @property
    def pool(self) -> str:
        return self.extractor.pool

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.extractor.feature_shape

    @property
    def labels_file(self) -> str | None:
        """The CSV the labels came from (None: class folders or no labels)."""
        return self.config.labels

    def refresh_command(self) -> str:
        """The command that updates this feature set in place: every setting that enters its id, as
        recorded, with the precision it was actually made with (so only new or changed files run)."""
        return self.config.command(precision=self.precision)

    # -- the attributes ---------------------------------------------------------------------------
    def to_attrs(self) -> dict:
        """The file's attributes, as featcache writes them (the fields still None are left out)."""
        e, m = self.extractor, self.made
        attrs = {
            "format": self.format, "id": self.id, "config_id": self.config_id, "key": self.key,
            "model": e.model, "family": e.family, "arch": e.arch, "weights": e.weights, "weights_kind": e.weights_kind,
            "weights_path": e.weights_path, "layer": e.layer, "pool": e.pool, "preprocess": e.preprocess.to_dict(),
            "decode": self.decode.key(), "dtype": self.dtype, "precision": self.precision,
            "feature_shape": list(e.feature_shape), "views": str(self.views), "n_views": self.views.count,
            "data_root": self.data_root, "manifest_sha256": self.manifest_sha256, "n_entries": self.n_entries,
            "created": m.created, "device": m.device, "batch_size": m.batch_size, "streams": m.streams,
            "compiled": m.compiled, "extract_seconds": m.extract_seconds, "images_per_second": m.images_per_second,
            "versions": m.versions, "extract_args": self.config.to_dict(),
        }
        if m.compile_error:
            attrs["compile_error"] = m.compile_error
        if self.shard:
            attrs.update(shard_index=self.shard.index, shard_count=self.shard.count, shard_start=self.shard.start,
                         shard_stop=self.shard.stop)
        for name in ("merged_from", "n_rows", "n_skipped", "content_sha256"):
            if getattr(self, name) is not None:
                attrs[name] = getattr(self, name)
        if self.content_sha256 is not None and self.content_hash_version != 1:
            attrs["content_hash_version"] = self.content_hash_version
        return attrs

    @classmethod
    def from_attrs(cls, a: dict) -> "FeatureSetInfo":
        """The record of a file's attributes (``store.h5.read_attrs``); older files: the defaults of their day."""
        stored = a.get("extract_args") or {}
        config = replace(ExtractConfig.from_dict(stored), data=a.get("data_root") or stored.get("data", ExtractConfig.data))
        key = a.get("key") or {}
        extractor = Extractor(
            model=a.get("model", ""), family=a.get("family", ""), arch=a.get("arch", ""), weights=a.get("weights", ""),
            weights_kind=a.get("weights_kind", ""), weights_path=a.get("weights_path") or "", layer=a.get("layer", ""),
            pool=a.get("pool", "none"), preprocess=Preprocess.from_dict(a.get("preprocess") or {}),
            feature_shape=tuple(a.get("feature_shape") or ()),
        )
        made = Made(
            created=a.get("created", ""), device=a.get("device", ""), batch_size=a.get("batch_size"), streams=a.get("streams"),
            compiled=bool(a.get("compiled", False)), compile_error=a.get("compile_error"),
            extract_seconds=a.get("extract_seconds", 0.0), images_per_second=a.get("images_per_second", 0.0),
            versions=a.get("versions") or {},
        )
        shard = (Shard(a["shard_index"], a["shard_count"], a["shard_start"], a["shard_stop"])
                 if "shard_index" in a else None)
        decode = a.get("decode") or key.get("decode")
        return cls(
            id=a.get("id", ""), config_id=a.get("config_id", ""), key=key, extractor=extractor,
            decode=Decode.from_key(decode) if decode else Decode(), dtype=a.get("dtype", "float16"),
            precision=a.get("precision", "fp32"), views=Views.parse(a.get("views", "none")), config=config,
            data_root=a.get("data_root") or "", manifest_sha256=a.get("manifest_sha256", ""), n_entries=a.get("n_entries", 0),
            made=made, shard=shard, merged_from=a.get("merged_from"), n_rows=a.get("n_rows"), n_skipped=a.get("n_skipped"),
            content_sha256=a.get("content_sha256"), content_hash_version=a.get("content_hash_version", 1),
            format=a.get("format", FORMAT_VERSION),
        )


def header_label(header: dict) -> dict:
    """What the staging header of an interrupted extraction knows of its feature set (``cache list``): the
    extractor key's architecture, layer and pooling, and the feature shape."""
    extractor = (header.get("key") or {}).get("extractor") or {}
    return {"model": extractor.get("arch"), "layer": extractor.get("layer"), "pool": extractor.get("pool"),
            "feature_shape": header.get("feature_shape")}
