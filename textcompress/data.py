"""Reading, validating and tokenizing labelled text, and batching it.

`prepare` reads train/validation (optional test) files in TSV, CSV, JSONL or Parquet (or a
Hugging Face dataset id), checks every row, builds the label map from the training labels,
tokenizes once, and writes everything into one directory atomically.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from textcompress.errors import DataError
from textcompress.fileio import atomic_dir

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    texts: list  # sentences, or (sentence, second sentence) pairs: what tokenizers' encode_batch takes
    input_ids: list[np.ndarray]
    labels: np.ndarray  # label ids (indices into the label map)

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------------------
# Reading rows: each reader yields (line number, texts, raw label), texts being one value per text
# column (the sentence, and the second one of a pair), and names the file in errors.

SKIPPED_SHOWN = 20  # bad rows listed by line in the stats, the log and the report; the rest are counted


class BadRows:
    """What happens to a row that cannot be used (an empty text, no label, a wrong number of fields, ...):
    data.bad_rows `error` refuses the file at that row; `skip` drops the row and remembers where it was."""

    def __init__(self, policy: str = "error"):
        self.skip, self.skipped = policy == "skip", []  # skipped: (file, line, problem)

    def refuse(self, path, problem: str, fix: str, line: int) -> None:
        if not self.skip:
            raise DataError(path, problem, f"{fix} (or set data.bad_rows: skip to drop such rows)", line)
        self.skipped.append((str(path), line, problem))

    def forget_after(self, path, line: int) -> None:
        self.skipped = [s for s in self.skipped if s[0] != str(path) or s[1] <= line]

    def summary(self) -> dict:
        files = list(dict.fromkeys(path for path, _, _ in self.skipped))  # files in reading order, lines in file order
        ordered = sorted(self.skipped, key=lambda s: (files.index(s[0]), s[1]))
        shown = [f"{path}:{line} ({problem})" for path, line, problem in ordered[:SKIPPED_SHOWN]]
        return {"count": len(self.skipped), "lines": shown, "not_listed": max(0, len(self.skipped) - SKIPPED_SHOWN)}


@dataclass
class Layout:
    """How a file is laid out: its text columns (the sentence, and the second one of a pair) and label
    column, named, or 0-based positions when it has no header (data.header: false); its encoding; and
    what happens to a bad row."""

    text_columns: list
    label_column: str | int
    header: bool = True
    encoding: str = "utf-8"
    bad_rows: BadRows = field(default_factory=BadRows)

    @property
    def columns(self) -> list:
        return [*self.text_columns, self.label_column]


def read_rows(path: str | Path, text_column, label_column, fmt: str = "auto", pair_column=None, *,
              header: bool = True, encoding: str = "utf-8", bad_rows: BadRows | None = None) -> list[tuple[int, object, object]]:
    """(line, text, raw label) rows of a data file, read by the reader of its format (`data.format`,
    or its suffix when auto); with `pair_column`, text is a (sentence, second sentence) pair.
    Without a header, the columns are 0-based positions."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(path, f"unknown format {fmt!r}", f"set data.format to one of {', '.join(FORMATS)}")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower()) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise DataError(path, f"unknown file type {path.suffix!r}",
                        f"use one of {', '.join(sorted(SUFFIX_FORMATS))}, or set data.format")
    if not path.is_file():
        raise DataError(path, "file not found", "check data.train / data.validation in params.yaml (and run `dvc pull data.dvc`)")
    columns = [text_column] if pair_column is None else [text_column, pair_column]
    layout = Layout(columns, label_column, header, encoding, bad_rows or BadRows())
    return _as_examples(READERS[fmt](path, layout))


def _as_examples(rows) -> list[tuple[int, object, object]]:
    """(line, [texts], label) -> (line, the sentence or a (sentence, second sentence) pair, label)."""
    return [(line, texts[0] if len(texts) == 1 else tuple(texts), label) for line, texts, label in rows]


def _read_tsv(path: Path, layout: Layout):
    return _read_delimited(path, _decode(path, layout.encoding), "\t", layout)


def _read_csv(path: Path, layout: Layout):
    return _read_delimited(path, _decode(path, layout.encoding), ",", layout)


def _decode(path: Path, encoding: str = "utf-8") -> str:
    raw = path.read_bytes()
    utf8 = codecs.lookup(encoding).name == "utf-8"
    try:
        return raw.decode("utf-8-sig" if utf8 else encoding)  # a leading BOM is harmless
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        name = "UTF-8" if utf8 else encoding
        raise DataError(path, f"is not valid {name} (byte {err.start})",
                        "set data.encoding to the file's encoding (e.g. latin-1, cp1252), or re-save it as UTF-8", line) from err


def _read_delimited(path: Path, text: str, delimiter: str, layout: Layout):
    # TSV files such as GLUE's do not quote; quotes are part of the sentence there.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        return _delimited_rows(path, reader, delimiter, layout)
    except csv.Error as err:  # a field over csv's size limit, a stray quote, ...
        raise DataError(path, f"cannot be read as {'TSV' if delimiter == chr(9) else 'CSV'} ({err})",
                        "check this line for a runaway quote or an overlong field", reader.line_num) from err


def _delimited_rows(path: Path, reader, delimiter: str, layout: Layout):
    first = next(reader, None)
    while first is not None and not layout.header and first in ([], [""]):
        first = next(reader, None)  # blank lines before the first row
    if first is None:
        raise DataError(path, "is empty", "provide a header row and at least one example per class" if layout.header
                        else "provide at least one example per class", 1)
    if layout.header:
        header = [h.strip() for h in first]
        for column in layout.columns:
            if column not in header:
                raise _missing_column(path, column, header)
        width, reference = len(header), "the header has"
        positions = [header.index(c) for c in layout.columns]
        rows = []
    else:
        width, reference = len(first), f"line {reader.line_num} has"
        for key, column in zip(_COLUMN_KEYS[len(layout.columns)], layout.columns):
            if column >= width:
                raise DataError(path, f"has {width} columns on line {reader.line_num}, so data.{key}: {column} is "
                                "past the last", f"give 0-based positions below {width}", reader.line_num)
        positions = layout.columns
        rows = [(reader.line_num, [first[i] for i in positions[:-1]], first[positions[-1]].strip())]
    for fields in reader:
        line = reader.line_num
        if not fields or fields == [""]:
            continue  # blank line
        if len(fields) != width:
            kind = "tab" if delimiter == "\t" else "comma"
            layout.bad_rows.refuse(path, f"has {len(fields)} fields where {reference} {width}",
                                   f"check the {kind}s on this line (a stray delimiter or a missing field)", line)
            continue
        rows.append((line, [fields[i] for i in positions[:-1]], fields[positions[-1]].strip()))
    return rows


_COLUMN_KEYS = {2: ("text_column", "label_column"), 3: ("text_column", "text_pair_column", "label_column")}
_COLUMN_FIX = "set data.text_column / data.text_pair_column / data.label_column in params.yaml, or fix the header"


def _missing_column(path: Path, column: str, header: list[str]) -> DataError:
    """The column is not in the header; when the header is a row of data (a file without one), say so."""
    shown = [h if len(h) <= 40 else h[:40] + "…" for h in header]
    problem, fix = f"has no column {column!r} (header: {shown})", _COLUMN_FIX
    signs = _looks_like_data(header)
    if signs:
        text = max(range(len(header)), key=lambda i: len(header[i]))
        label = next((i for i in range(len(header)) if i != text and _label_like(header[i])), None)
        example = f"text_column: {text}" + (f", label_column: {label}" if label is not None else "")
        problem += f"; its first line looks like data, not a header ({'; '.join(signs)})"
        fix = (f"if the file has no header, set data.header: false and give the columns as 0-based positions "
               f"(e.g. {example}); else {_COLUMN_FIX}")
    return DataError(path, problem, fix, 1)


def _label_like(value: str) -> bool:
    return re.fullmatch(r"-?\d+(\.0)?", value.strip()) is not None


def _looks_like_data(header: list[str]) -> list[str]:
    """Why a header row reads like an example: a sentence where a name would be, or a number as a name."""
    signs = [f"column {i} holds {len(h)} characters" for i, h in enumerate(header) if len(h) > 40 or len(h.split()) >= 5]
    signs += [f"{h.strip()!r} in column {i} looks like a label" for i, h in enumerate(header) if _label_like(h)]
    return signs


def _read_jsonl(path: Path, layout: Layout):
    _named_columns_only(path, layout, "JSONL lines name their fields")
    text, rows = _decode(path, layout.encoding), []
    wanted = layout.columns
    # Split on newlines only: JSON strings may hold U+2028 and friends, which splitlines() breaks on.
    for line, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            layout.bad_rows.refuse(path, f"is not valid JSON ({err.msg})", "write one JSON object per line", line)
            continue
        if not isinstance(record, dict) or any(c not in record for c in wanted):
            layout.bad_rows.refuse(path, f"lacks one of {', '.join(map(repr, wanted))}",
                                   "give every line these fields, or set data.text_column / data.text_pair_column / "
                                   "data.label_column", line)
            continue
        rows.append((line, [record[c] for c in layout.text_columns], record[layout.label_column]))
    return rows


def _named_columns_only(source, layout: Layout, why: str) -> None:
    if not layout.header:
        raise DataError(source, f"cannot be read by column positions (data.header: false): {why}",
                        "set data.header: true and name the columns in data.text_column / data.label_column")


def _read_parquet(path: Path, layout: Layout):
    _named_columns_only(path, layout, "Parquet names its columns")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:
        raise DataError(path, f"is not a readable Parquet file ({err.__class__.__name__})", "re-write it as Parquet") from err
    return _frame_rows(path, frame, layout.text_columns, layout.label_column)


def _frame_rows(source, frame: pd.DataFrame, text_columns: list[str], label_column: str):
    for column in (*text_columns, label_column):
        if column not in frame.columns:
            raise DataError(source, f"has no column {column!r} (columns: {list(frame.columns)})",
                            _COLUMN_FIX.removesuffix(", or fix the header"))
    texts = zip(*(frame[c].tolist() for c in text_columns))
    # Row numbers are 1-based, as a spreadsheet shows them.
    return [(i + 1, list(t), label) for i, (t, label) in enumerate(zip(texts, frame[label_column].tolist()))]


# A format is its reader: (path, Layout) -> [(line, [texts], raw label)], bad rows refused through Layout.bad_rows.
READERS = {"tsv": _read_tsv, "csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
FORMATS = ("auto", *READERS, "hf")  # data.format; hf: a Hugging Face dataset id in data.train


def read_hf_split(dataset_id: str, split: str, text_column: str, label_column: str, pair_column: str | None = None):
    try:
        import datasets
    except ImportError as err:
        raise DataError(dataset_id, "a Hugging Face dataset id needs the `datasets` package", "pip install datasets, or export the data to a file") from err
    frame = datasets.load_dataset(dataset_id, split=split).to_pandas()
    columns = [text_column] if pair_column is None else [text_column, pair_column]
    return _as_examples(_frame_rows(f"{dataset_id} ({split})", frame, columns, label_column))


# ---------------------------------------------------------------------------
# Validation and the label map


def normalise_labels(path, rows, bad_rows: BadRows | None = None) -> tuple[list, list]:
    """The usable rows and their labels. Labels are ints or strings, not both: "1" and 1 are the same
    label, "pos" and 1 are an error; when bad rows are skipped, the rarer kind is the bad one."""
    bad_rows = bad_rows or BadRows()
    usable = []
    for line, text, label in rows:
        problem = _row_problem(text, label)
        if problem:
            bad_rows.refuse(path, *problem, line)
        else:
            usable.append(((line, text, label), _as_label(label)))
    kinds = [type(value).__name__ for _, value in usable]
    if len(set(kinds)) < 2:
        return [row for row, _ in usable], [value for _, value in usable]
    first = kinds[0] if not bad_rows.skip else max(set(kinds), key=kinds.count)
    first_line = next(row[0] for (row, _), kind in zip(usable, kinds) if kind == first)
    kept = []
    for (row, value), kind in zip(usable, kinds):
        if kind == first:
            kept.append((row, value))
        elif not bad_rows.skip:
            raise DataError(path, f"label {row[2]!r} is {kind} but line {first_line} has a {first} label",
                            "use one kind of label throughout (all integers or all names)", row[0])
        else:
            bad_rows.refuse(path, f"label {row[2]!r} is {kind} where the other labels are {first}",
                            "use one kind of label throughout", row[0])
    return [row for row, _ in kept], [value for _, value in kept]


def _row_problem(text, label) -> tuple[str, str] | None:
    """Why a row cannot be used, and its fix; None when it can."""
    for part, which in zip(text if isinstance(text, tuple) else (text,), ("text", "second text of the pair")):
        if not isinstance(part, str) or not part.strip():
            return f"has an empty {which}", f"remove the row or fill in its {which}"
    if label is None or (isinstance(label, float) and np.isnan(label)) or str(label).strip() == "":
        return "has no label", "fill in the label or remove the row"
    return None


def _as_label(label):
    if isinstance(label, (bool, np.bool_)):
        return int(label)
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, float) and label.is_integer():
        return int(label)
    text = str(label).strip()
    try:
        return int(text)
    except ValueError:
        return text


def build_label_map(path, labels: list) -> list:
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(path, f"has one class only ({classes[0]!r})" if classes else "has no rows",
                        "a classifier needs examples of at least two classes in the training file")
    return classes


# ---------------------------------------------------------------------------
# prepare: the whole stage as one function


def prepare(data_params: dict, tokenizer_file: str | Path, out_dir: str | Path) -> dict:
    """Read, validate and tokenize every split; write `out_dir` atomically. Returns stats, which list
    the bad rows dropped under data.bad_rows: skip."""
    tokenizer = load_tokenizer(tokenizer_file, data_params["max_length"])
    bad_rows = BadRows(data_params.get("bad_rows", "error"))
    splits = {}
    for split in SPLITS:
        source = data_params.get(split)
        if source is None:
            if split != "test":
                raise DataError(f"data.{split}", "is not set", f"set data.{split} in params.yaml to a file")
            continue
        pair_column = data_params.get("text_pair_column")
        if data_params.get("format") == "hf":
            rows = read_hf_split(data_params["train"], split, data_params["text_column"], data_params["label_column"],
                                 pair_column)
        else:
            rows = read_rows(source, data_params["text_column"], data_params["label_column"],
                             data_params.get("format", "auto"), pair_column, header=data_params.get("header", True),
                             encoding=data_params.get("encoding", "utf-8"), bad_rows=bad_rows)
        if split == "train" and data_params.get("limit_train") and len(rows) >= data_params["limit_train"]:
            rows = rows[: int(data_params["limit_train"])]
            bad_rows.forget_after(source, rows[-1][0])  # rows past the limit are not read, bad or not
        rows, labels = normalise_labels(source, rows, bad_rows)
        _require_rows(source, rows, bad_rows)
        splits[split] = (source, rows, labels)

    if data_params.get("selection_fraction"):
        splits = {**splits, **carve_selection(splits["train"], data_params["selection_fraction"],
                                              by=data_params.get("selection_by", "sentence"))}
    train_source, _, train_labels = splits["train"]
    label_map = build_label_map(train_source, train_labels)
    index = {label: i for i, label in enumerate(label_map)}
    for split, (source, rows, labels) in splits.items():
        known = [i for i, label in enumerate(labels) if label in index]
        if len(known) < len(rows):
            for i in sorted(set(range(len(rows))) - set(known)):
                line, _, raw = rows[i]
                bad_rows.refuse(source, f"label {raw!r} never occurs in the training data ({train_source})",
                                f"fix the label, or add training examples of it (known: {label_map})", line)
            splits[split] = (source, [rows[i] for i in known], [labels[i] for i in known])
            _require_rows(source, splits[split][1], bad_rows)

    stats = {"labels": label_map, "pairs": bool(data_params.get("text_pair_column")), "skipped_rows": bad_rows.summary()}
    with atomic_dir(out_dir) as tmp:
        for split, (source, rows, labels) in splits.items():
            texts = [text if isinstance(text, tuple) else str(text) for _, text, _ in rows]
            ids = [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(texts)]
            columns = {"text": texts} if not isinstance(texts[0], tuple) else \
                {"text": [a for a, _ in texts], "text_pair": [b for _, b in texts]}
            frame = pd.DataFrame({**columns, "label": [index[l] for l in labels], "input_ids": ids})
            frame.to_parquet(tmp / f"{split}.parquet", index=False)
            lengths = np.array([len(i) for i in ids])
            stats[split] = {"rows": len(rows), "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max()),
                            "truncated": int((lengths >= data_params["max_length"]).sum()),
                            "class_counts": {str(c): int(n) for c, n in zip(label_map, np.bincount([index[l] for l in labels], minlength=len(label_map)))}}
        (tmp / "labels.json").write_text(json.dumps(label_map) + "\n")
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _require_rows(source, rows: list, bad_rows: BadRows) -> None:
    if rows:
        return
    skipped = [(line, problem) for path, line, problem in bad_rows.skipped if path == str(source)]
    if not skipped:
        raise DataError(source, "has no rows", "add examples below the header")
    raise DataError(source, f"has no usable rows: all {len(skipped)} were bad rows (line {skipped[0][0]}: {skipped[0][1]})",
                    "check data.header, data.encoding and the columns, or fix the rows")


def carve_selection(train: tuple, fraction: float, seed: int = 0, by: str = "sentence") -> dict:
    """Split (source, rows, labels) of training into train and a seeded `selection` part of about
    `fraction` of its rows. by="row": a random set of rows. by="sentence": whole source sentences
    (see source_sentences): every row of a chosen sentence leaves training, and the sentence itself,
    not its phrases, is the selection row, as validation holds whole sentences."""
    source, rows, labels = train
    rng = np.random.default_rng(seed)
    if by == "row":
        chosen = set(rng.permutation(len(rows))[: int(round(fraction * len(rows)))].tolist())
        picked = sorted(chosen)
    else:
        sentence_of = source_sentences([text for _, text, _ in rows])
        members: dict[int, list[int]] = {}
        for i, root in enumerate(sentence_of):
            members.setdefault(root, []).append(i)
        chosen, picked, wanted = set(), [], int(round(fraction * len(rows)))
        for root in rng.permutation(sorted(members)).tolist():
            if len(chosen) >= wanted:
                break
            chosen.update(members[root])
            picked.append(root)
        picked.sort()
    if not chosen or len(chosen) == len(rows):
        raise DataError(source, f"selection_fraction {fraction} of {len(rows)} rows leaves one side empty",
                        "use a larger training set or another data.selection_fraction")
    keep = [i for i in range(len(rows)) if i not in chosen]
    return {"train": (source, [rows[i] for i in keep], [labels[i] for i in keep]),
            "selection": (source, [rows[i] for i in picked], [labels[i] for i in picked])}


def source_sentences(texts: list) -> list[int]:
    """For each row, the index of the longest row whose words contain it (itself if none does): its
    source sentence. SST-2's training rows are phrases cut from about 6,900 sentences; holding out
    rows at random leaves their sentences and sibling phrases in training, which made the selection
    split 5.8 points easier than validation (95.1 % against 89.3 % for one teacher). A pair of
    sentences (MRPC) is its own source, as is a repeated row's first copy for its repeats."""
    if any(isinstance(text, tuple) for text in texts):
        first: dict = {}
        return [first.setdefault(text, i) for i, text in enumerate(texts)]
    padded = [" " + " ".join(str(text).split()) + " " for text in texts]  # matches whole words only
    sentence_of = list(range(len(texts)))
    sentences_with: dict[str, list[int]] = {}  # word -> the sentences found so far that contain it
    for i in sorted(range(len(texts)), key=lambda i: -len(padded[i])):  # longest first: sentences before phrases
        words = set(padded[i].split())
        holders = [sentences_with.get(word) for word in words]
        if words and all(holders):  # only a sentence holding every word can contain the row; scan the rarest word's
            found = next((root for root in min(holders, key=len) if padded[i] in padded[root]), None)
            if found is not None:
                sentence_of[i] = found
                continue
        for word in words:
            sentences_with.setdefault(word, []).append(i)
    return sentence_of


def token_counts(split: Split, vocab_size: int) -> np.ndarray:
    """How often each word piece occurs in the split (index: piece id)."""
    ids = np.concatenate(split.input_ids) if len(split) else np.zeros(0, dtype=np.int64)
    return np.bincount(ids, minlength=vocab_size)[:vocab_size]


def load_tokenizer(tokenizer_file: str | Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()  # batches pad dynamically to their longest sentence
    tokenizer.enable_truncation(max_length)
    return tokenizer


def retokenized(split: Split, tokenizer: Tokenizer) -> Split:
    """`split`'s texts tokenized by another tokenizer (a trimmed vocabulary, a student's own)."""
    return Split(split.texts, [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(split.texts)],
                 split.labels)


def load_split(prepared_dir: str | Path, split: str) -> Split:
    frame = pd.read_parquet(Path(prepared_dir) / f"{split}.parquet")
    texts = frame["text"].tolist() if "text_pair" not in frame else list(zip(frame["text"], frame["text_pair"]))
    return Split(texts, [np.asarray(x, dtype=np.int64) for x in frame["input_ids"]],
                 frame["label"].to_numpy(dtype=np.int64))


def pair_separator(tokenizer_file: str | Path) -> int:
    """The token that ends a pair's first segment (BERT's [SEP]): the last of token type 0 when
    the tokenizer encodes a pair."""
    encoded = Tokenizer.from_file(str(tokenizer_file)).encode("a", "b")
    return encoded.ids[max(i for i, t in enumerate(encoded.type_ids) if t == 0)]


def holds_pairs(prepared_dir: str | Path) -> bool:
    return bool(json.loads((Path(prepared_dir) / "stats.json").read_text()).get("pairs"))


def describe_skipped(skipped: dict | None) -> str | None:
    """One sentence for prepare's log and the report: how many bad rows were dropped, and which."""
    if not skipped or not skipped["count"]:
        return None
    more = f" and {skipped['not_listed']} more" if skipped["not_listed"] else ""
    return (f"prepare skipped {skipped['count']} bad row{'s' * (skipped['count'] != 1)} (data.bad_rows: skip): "
            f"{'; '.join(skipped['lines'])}{more}")


def skipped_rows(prepared_dir: str | Path) -> dict | None:
    """The bad rows prepare dropped under data.bad_rows: skip ({count, lines, not_listed})."""
    return json.loads((Path(prepared_dir) / "stats.json").read_text()).get("skipped_rows")


def load_labels(prepared_dir: str | Path) -> list:
    return json.loads((Path(prepared_dir) / "labels.json").read_text())


# ---------------------------------------------------------------------------
# Batching: length buckets keep padding (and so wasted compute) small.


def length_bucketed_batches(lengths, batch_size: int, shuffle: bool, seed: int = 0) -> list[np.ndarray]:
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50  # sort within chunks: similar lengths together, still random overall
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_arrays(sequences: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both int64."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_batch(sequences: list[np.ndarray], pad_id: int = 0):
    """`pad_arrays` as torch tensors, for training (torch is imported here only, so that
    serving, which uses `pad_arrays`, does not load it)."""
    import torch

    ids, mask = pad_arrays(sequences, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)
