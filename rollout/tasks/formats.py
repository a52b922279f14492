"""Loaders for public VQA-style data sets in the files they are distributed as, plus an image folder.

Each loader reads the annotation file(s), resolves images on disk, turns every record into one row
of task fields and passes it through :class:`rollout.tasks.validate.TaskCollector`, so malformed
records are skipped and counted with a reason instead of failing the load. Images are stored as the
file's bytes (not re-encoded); records that share an image share one ``bytes`` object. Write the
result with ``rollout.tasks.schema.write_tasks(path, result.tasks)``.

Formats (field names as the data sets ship them):

- **ScienceQA** (Lu et al., NeurIPS 2022; github.com/lupantech/ScienceQA): ``problems.json`` maps
  pid -> ``{question, choices, answer (index), hint, image ("image.png" or null), lecture,
  solution, split, subject, topic, category, grade, skill}``; images at
  ``images/{split}/{pid}/image.png``. A JSON list or JSONL of records with a ``pid`` also works.
- **SNLI-VE** (Xie et al., 2019; github.com/necla-ml/SNLI-VE): ``snli_ve_{train,dev,test}.jsonl``
  with ``Flikr30kID`` (sic, e.g. "3637013.jpg"), ``sentence2`` (hypothesis), ``gold_label``
  (entailment/neutral/contradiction), ``pairID``, ``sentence1`` (the caption the image replaces);
  images are Flickr30k's ``flickr30k_images/{Flikr30kID}``.
- **Visual Genome QA** (Krishna et al., IJCV 2017): ``question_answers.json`` is a list of
  ``{id (image id), qas: [{qa_id, image_id, question, answer, ...}]}``; images at
  ``VG_100K/{image_id}.jpg`` or ``VG_100K_2/{image_id}.jpg``.

Every loader takes ``limit``: the number of rows considered (records, or QA pairs for Visual
Genome), valid or not, counted from the start of the file.

Format-level reasons added to the common ones: ``"invalid JSON line"``, ``"record not an object"``,
``"image file not found"``, ``"answer index not an integer"``, ``"answer index out of range"``,
``"choices: not a list of strings"``, ``"invalid label"``, ``"missing hypothesis"``,
``"missing image id"``, ``"qas not a list"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from rollout.tasks.validate import TaskDataError, TaskLoadResult, collect_rows

Row = dict[str, Any] | str
"""Task fields for the collector, or the reason the record is malformed."""


class _Invalid:
    """Marker for a JSONL line that is not valid JSON."""


INVALID_LINE = _Invalid()


def read_json(path: str | Path) -> Any:
    """The parsed JSON document at ``path``; an unreadable or invalid file raises TaskDataError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise TaskDataError(f"cannot read JSON file {path}: {err}") from err


def read_jsonl(path: str | Path) -> list[Any]:
    """One parsed value per non-blank line; invalid lines become :data:`INVALID_LINE`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise TaskDataError(f"cannot read JSONL file {path}: {err}") from err
    records: list[Any] = []
    for line in filter(str.strip, lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append(INVALID_LINE)
    return records


def read_records(path: str | Path) -> Any:
    """JSONL (``.jsonl``) as a list of records, anything else as one JSON document."""
    return read_jsonl(path) if str(path).endswith(".jsonl") else read_json(path)


class ImageFolder:
    """Reads image files under a root once each, by the first candidate path that exists."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root)
        self._cache: dict[Path, bytes] = {}

    def read(self, candidates: Iterable[str | Path]) -> bytes | None:
        """Bytes of the first existing ``root/candidate``, or None if none exists (or no root)."""
        if self.root is None:
            return None
        for rel in candidates:
            path = self.root / rel
            if path in self._cache:
                return self._cache[path]
            if path.is_file():
                self._cache[path] = path.read_bytes()
                return self._cache[path]
        return None


def _string_metadata(record: dict[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """``record[k]`` as strings for the keys present with a scalar, non-empty value."""
    out = {}
    for key in keys:
        value = record.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value) != "":
            out[key] = str(value)
    return out


# --- ScienceQA --------------------------------------------------------------------------------

SCIENCEQA_METADATA = (
    "hint", "lecture", "solution", "split", "subject", "topic", "category", "grade", "skill"
)


def _scienceqa_records(doc: Any) -> Iterator[tuple[int, str, Any]]:
    """(row_index, pid, record): problems.json's dict keyed by pid, or a list with ``pid`` fields."""
    if isinstance(doc, dict):
        items: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in doc.items())
    elif isinstance(doc, list):
        items = ((str(r.get("pid", i)) if isinstance(r, dict) else str(i), r) for i, r in enumerate(doc))
    else:
        kind = type(doc).__name__
        raise TaskDataError(f"ScienceQA: expected a JSON object or list of problems, got {kind}")
    for index, (pid, record) in enumerate(items):
        yield index, pid, record


def _scienceqa_answer(record: dict[str, Any]) -> str | tuple[list[str], int]:
    choices, answer = record.get("choices"), record.get("answer")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        return "choices: not a list of strings"
    if isinstance(answer, bool) or not isinstance(answer, int):
        return "answer index not an integer"
    if not 0 <= answer < len(choices):
        return "answer index out of range"
    return choices, answer


def scienceqa_row(pid: str, record: Any, images: ImageFolder, include_hint: bool = True) -> Row:
    """Task fields of one ScienceQA problem: question (+ "Context: hint"), choices, answer text."""
    if not isinstance(record, dict):
        return "record not an object"
    checked = _scienceqa_answer(record)
    if isinstance(checked, str):
        return checked
    choices, answer = checked
    image = None
    if record.get("image"):
        name, split = str(record["image"]), str(record.get("split", ""))
        image = images.read([Path(split, pid, name), Path(pid, name), Path(name)])
        if image is None:
            return "image file not found"
    question, hint = record.get("question"), record.get("hint")
    if include_hint and isinstance(question, str) and isinstance(hint, str) and hint.strip():
        question = f"{question}\nContext: {hint.strip()}"
    metadata = _string_metadata(record, SCIENCEQA_METADATA)
    metadata["answer_index"] = str(answer)
    return {"task_id": f"scienceqa/{pid}", "question": question, "answer": choices[answer],
            "image": image, "choices": choices, "source": "scienceqa", "metadata": metadata}


def load_scienceqa(
    problems_path: str | Path,
    images_dir: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    *,
    include_hint: bool = True,
    check_images: bool = True,
) -> TaskLoadResult:
    """ScienceQA problems (only ``split``'s if given) as multiple-choice tasks.

    ``images_dir`` is the folder holding ``{split}/{pid}/image.png``; problems whose image cannot
    be found are skipped ("image file not found"). ``limit`` caps the rows considered.
    """
    images = ImageFolder(images_dir)

    def rows() -> Iterator[tuple[int, Row]]:
        for index, pid, record in _scienceqa_records(read_records(problems_path)):
            if record is INVALID_LINE:
                yield index, "invalid JSON line"
            elif split is None or not isinstance(record, dict) or record.get("split") == split:
                yield index, scienceqa_row(pid, record, images, include_hint)

    return collect_rows(rows(), limit, check_images=check_images)


# --- SNLI-VE ----------------------------------------------------------------------------------

SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")
_FLICKR_KEYS = ("Flikr30kID", "Flickr30kID", "Flickr30K_ID")


def snli_ve_prompt(hypothesis: str) -> str:
    """The visual-entailment question for one hypothesis (answer is one of the three labels)."""
    return (
        f'Statement: "{hypothesis}"\nDoes the image entail the statement, contradict it, or is it '
        "neutral? Answer with one word: entailment, neutral or contradiction."
    )


def snli_ve_row(index: int, record: Any, images: ImageFolder) -> Row:
    """Task fields of one SNLI-VE pair: image + hypothesis, answer = gold label."""
    if not isinstance(record, dict):
        return "record not an object"
    label, hypothesis = record.get("gold_label"), record.get("sentence2")
    if label not in SNLI_VE_LABELS:
        return "invalid label"
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        return "missing hypothesis"
    image_id = next((str(record[k]) for k in _FLICKR_KEYS if record.get(k)), "")
    if not image_id:
        return "missing image id"
    name = image_id if Path(image_id).suffix else f"{image_id}.jpg"
    image = images.read([name])
    if image is None:
        return "image file not found"
    metadata = {"hypothesis": hypothesis.strip(), "image_id": image_id}
    if isinstance(record.get("sentence1"), str):
        metadata["premise"] = record["sentence1"]
    return {"task_id": f"snli_ve/{record.get('pairID') or index}",
            "question": snli_ve_prompt(hypothesis.strip()), "answer": label, "image": image,
            "choices": list(SNLI_VE_LABELS), "source": "snli_ve", "metadata": metadata}


def load_snli_ve(
    jsonl_path: str | Path, images_dir: str | Path, limit: int | None = None, *, check_images: bool = True
) -> TaskLoadResult:
    """SNLI-VE pairs as 3-way multiple-choice tasks; ``images_dir`` holds the Flickr30k JPEGs."""
    images = ImageFolder(images_dir)
    records = read_records(jsonl_path)
    if not isinstance(records, list):
        raise TaskDataError(f"SNLI-VE: {jsonl_path} is not a list of records")
    rows = (
        (i, "invalid JSON line" if r is INVALID_LINE else snli_ve_row(i, r, images))
        for i, r in enumerate(records)
    )
    return collect_rows(rows, limit, check_images=check_images)


# --- Visual Genome QA -------------------------------------------------------------------------


def normalize_vg_answer(answer: Any) -> Any:
    """Visual Genome answers are short sentences ("Green."): strip spaces and a final period."""
    return answer.strip().rstrip(".").strip() if isinstance(answer, str) else answer


def _vg_image(images: ImageFolder, image_id: Any) -> bytes | None:
    name = f"{image_id}.jpg"
    return images.read([name, Path("VG_100K", name), Path("VG_100K_2", name)])


def _vg_qa_row(image_id: Any, k: int, qa: Any, image: bytes | None) -> Row:
    if not isinstance(qa, dict):
        return "record not an object"
    if image is None:
        return "image file not found"
    answer = normalize_vg_answer(qa.get("answer"))
    metadata = {"image_id": str(image_id)}
    if isinstance(qa.get("answer"), str):
        metadata["raw_answer"] = qa["answer"]
    qa_id = qa.get("qa_id")
    return {"task_id": f"visual_genome/{qa_id if qa_id is not None else f'{image_id}-{k}'}",
            "question": qa.get("question"), "answer": answer, "image": image,
            "source": "visual_genome", "metadata": metadata}


def visual_genome_rows(doc: Any, images: ImageFolder) -> Iterator[tuple[int, Row]]:
    """One row per question-answer pair (row index counts QA pairs; a broken image entry is one row)."""
    if not isinstance(doc, list):
        raise TaskDataError(f"Visual Genome: expected a list of images, got {type(doc).__name__}")
    index = 0
    for entry in doc:
        if not isinstance(entry, dict) or not isinstance(entry.get("qas"), list):
            yield index, "record not an object" if not isinstance(entry, dict) else "qas not a list"
            index += 1
            continue
        image_id = entry.get("id", entry.get("image_id"))
        image = _vg_image(images, image_id) if entry["qas"] else None
        for k, qa in enumerate(entry["qas"]):
            yield index, _vg_qa_row(image_id, k, qa, image)
            index += 1


def load_visual_genome(
    qa_path: str | Path, images_dir: str | Path, limit: int | None = None, *, check_images: bool = True
) -> TaskLoadResult:
    """Visual Genome question-answer pairs as free-form VQA tasks (answers normalised, see above)."""
    rows = visual_genome_rows(read_records(qa_path), ImageFolder(images_dir))
    return collect_rows(rows, limit, check_images=check_images)
