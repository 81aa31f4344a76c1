"""Chapter assembly: order-independent, streamed one chunk at a time, room tone in the pauses,
nothing half-written, and clear errors for an output folder that cannot be used."""

from __future__ import annotations

import gc
import itertools
import math
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csm_offload.audio import Audio
from csm_offload.book.assemble import ChapterAssembler, Pauses, check_output_dir
from csm_offload.book.roomtone import dbfs
from csm_offload.errors import UserError

RATE = 24_000
#: Short pauses keep the files small; distinct lengths make every boundary recognisable.
PAUSES = Pauses(sentence_s=0.05, paragraph_s=0.125, head_s=0.025, tail_s=0.075)


def _chunk(index: int, seconds: float = 0.1, rate: int = RATE) -> Audio:
    """Loud, index-seeded noise: unmistakable next to room tone."""
    samples = np.random.default_rng(index).uniform(-0.5, 0.5, round(seconds * rate))
    return Audio(samples.astype(np.float32), rate)


def _assemble(path: Path, paragraph_ends: list[bool], order: list[int], seed: int = 0) -> bytes:
    with ChapterAssembler(path, _chunk, paragraph_ends, pauses=PAUSES, seed=seed) as chapter:
        for index in order:
            chapter.ready(index)
        chapter.commit()
    return path.read_bytes()


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[bool], list[int]]:
    """A chapter's paragraph ends and an arrival order of its chunks (with repeats)."""
    ends = draw(st.lists(st.booleans(), min_size=1, max_size=12))
    order = draw(st.permutations(range(len(ends))))
    repeats = draw(st.lists(st.sampled_from(range(len(ends))), max_size=3))
    return ends, [*order, *repeats]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layout=layouts())
def test_chunks_arriving_out_of_order_give_the_in_order_file(
    tmp_path: Path, layout: tuple[list[bool], list[int]]
) -> None:
    ends, order = layout
    in_order = _assemble(tmp_path / "in-order.flac", ends, list(range(len(ends))))
    shuffled = _assemble(tmp_path / "shuffled.flac", ends, order)
    assert shuffled == in_order
    assert _leftovers(tmp_path) == []


def test_the_prefix_is_written_as_soon_as_it_is_contiguous(tmp_path: Path) -> None:
    loaded: list[int] = []

    def load(index: int) -> Audio:
        loaded.append(index)
        return _chunk(index)

    with ChapterAssembler(tmp_path / "c.flac", load, [False] * 5, pauses=PAUSES) as chapter:
        assert chapter.ready(2) == 0
        assert chapter.ready(4) == 0
        assert loaded == []  # nothing is read before its turn
        assert chapter.ready(0) == 1
        assert chapter.ready(1) == 3
        assert chapter.ready(3) == 5
        assert chapter.complete
        chapter.commit()
    assert loaded == [0, 1, 2, 3, 4]  # each chunk read once, in order


def test_at_most_one_chunk_is_alive_while_writing(tmp_path: Path) -> None:
    """The book never sits in memory: each chunk is dropped once it is in the file."""
    alive: list[weakref.ref[Audio]] = []

    def load(index: int) -> Audio:
        gc.collect()
        assert [ref for ref in alive if ref() is not None] == []
        audio = _chunk(index, seconds=0.5)
        alive.append(weakref.ref(audio))
        return audio

    with ChapterAssembler(tmp_path / "c.flac", load, [False] * 8, pauses=PAUSES) as chapter:
        for index in reversed(range(8)):
            chapter.ready(index)
        chapter.commit()
    assert len(alive) == 8


def test_the_layout_is_head_chunks_with_sentence_and_paragraph_pauses_then_tail(
    tmp_path: Path,
) -> None:
    ends = [False, True, False]
    path = tmp_path / "c.flac"
    _assemble(path, ends, [0, 1, 2])
    chapter = Audio.decode(path.read_bytes())
    cuts = [0.025, 0.1, 0.05, 0.1, 0.125, 0.1, 0.075]  # head, chunk, sentence, ..., tail
    bounds = np.cumsum([0, *(round(s * RATE) for s in cuts)])
    assert chapter.frames == bounds[-1]
    pieces = [chapter.samples[a:b] for a, b in itertools.pairwise(bounds)]
    for number, piece in zip(range(3), pieces[1::2], strict=True):
        assert np.array_equal(piece, _chunk(number).quantized().samples)
    for pause in pieces[0::2]:
        level = dbfs(float(np.sqrt(np.mean(np.square(pause, dtype=np.float64)))))
        assert -70 < level <= -60  # room tone, not digital silence


def test_chunks_at_other_rates_are_resampled_to_the_chapter_rate(tmp_path: Path) -> None:
    rates = [48_000, 16_000, 24_000]

    def load(index: int) -> Audio:
        return _chunk(index, seconds=1.0, rate=rates[index])

    path = tmp_path / "c.flac"
    with ChapterAssembler(path, load, [False] * 3, pauses=PAUSES, sample_rate=RATE) as chapter:
        for index in range(3):
            chapter.ready(index)
        done = chapter.commit()
    pauses = round(0.025 * RATE) + 2 * round(0.05 * RATE) + round(0.075 * RATE)
    assert done.sample_rate == RATE
    assert done.frames == pauses + 3 * RATE
    assert math.isclose(done.duration, 3.2)
    assert Audio.decode(path.read_bytes()).frames == done.frames


def test_the_chapter_rate_may_differ_from_the_chunks(tmp_path: Path) -> None:
    path = tmp_path / "c.flac"
    with ChapterAssembler(path, _chunk, [True], pauses=PAUSES, sample_rate=44_100) as chapter:
        chapter.ready(0)
        done = chapter.commit()
    assert Audio.decode(path.read_bytes()).sample_rate == 44_100
    assert done.frames == round(0.025 * 44_100) + 4410 + round(0.075 * 44_100)


def test_other_seeds_give_other_room_tone(tmp_path: Path) -> None:
    first = _assemble(tmp_path / "a.flac", [False], [0], seed=1)
    again = _assemble(tmp_path / "b.flac", [False], [0], seed=1)
    other = _assemble(tmp_path / "c.flac", [False], [0], seed=2)
    assert first == again
    assert first != other


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in the middle of a chapter."""


def test_an_interrupted_assembly_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "c.flac"
    path.write_bytes(b"the previous chapter")

    def load(index: int) -> Audio:
        if index == 3:
            raise Interrupted
        return _chunk(index)

    chapter = ChapterAssembler(path, load, [False] * 5, pauses=PAUSES)
    for index in range(3):
        chapter.ready(index)
    with pytest.raises(Interrupted):
        chapter.ready(3)
    assert path.read_bytes() == b"the previous chapter"
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="aborted"):
        chapter.ready(4)


def test_a_chapter_never_committed_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.flac"
    with ChapterAssembler(path, _chunk, [False] * 3, pauses=PAUSES) as chapter:
        chapter.ready(0)
        chapter.ready(1)
    assert not path.exists()
    assert _leftovers(tmp_path) == []


def test_commit_before_every_chunk_is_written_is_refused(tmp_path: Path) -> None:
    with ChapterAssembler(tmp_path / "c.flac", _chunk, [False] * 3, pauses=PAUSES) as chapter:
        chapter.ready(0)
        chapter.ready(2)
        with pytest.raises(RuntimeError, match="chunk 1 of 3 is not ready"):
            chapter.commit()
        with pytest.raises(IndexError):
            chapter.ready(3)
    assert _leftovers(tmp_path) == []


def test_an_empty_chapter_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one chunk"):
        ChapterAssembler(tmp_path / "c.flac", _chunk, [])


def test_the_output_folder_is_made_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "book" / "chapters" / "c.flac"
    _assemble(path, [False], [0])
    assert Audio.decode(path.read_bytes()).frames > 0


def test_an_output_folder_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "book"
    blocker.write_text("not a folder")
    for folder in (blocker, blocker / "chapters"):
        with pytest.raises(UserError, match=r"is a file, not a folder.*choose another output"):
            check_output_dir(folder)
        with pytest.raises(UserError, match="is a file, not a folder"):
            ChapterAssembler(folder / "c.flac", _chunk, [False])


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot create files in. Root ignores permission bits, so as root
    it is sysfs, which refuses new files to everyone."""
    if os.geteuid() == 0:
        folder = Path("/sys")
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
    try:
        (folder / f".probe-{os.getpid()}").open("xb").close()
    except OSError:
        yield folder
    else:
        (folder / f".probe-{os.getpid()}").unlink()
        pytest.skip(f"{folder} is writable here, so no unwritable folder is at hand")
    finally:
        if folder != Path("/sys"):
            folder.chmod(0o700)


def test_an_unwritable_output_folder_is_one_clear_error(unwritable_dir: Path) -> None:
    with pytest.raises(UserError, match=r"cannot write to .*choose an output folder you can"):
        check_output_dir(unwritable_dir)
    with pytest.raises(UserError, match="cannot write to"):
        ChapterAssembler(unwritable_dir / "c.flac", _chunk, [False])


@settings(max_examples=60, deadline=None)
@given(seconds=st.floats(0, 60, allow_nan=False))
def test_any_pause_from_0_to_60_seconds_is_accepted(seconds: float) -> None:
    pauses = Pauses(sentence_s=seconds, paragraph_s=seconds, head_s=seconds, tail_s=seconds)
    assert pauses.after(True) == pauses.after(False) == seconds


@settings(max_examples=60, deadline=None)
@given(
    bad=st.floats().filter(lambda x: not 0 <= x <= 60)
    | st.sampled_from([True, "0.5", None])
    | st.integers(61, 10**9)
)
def test_a_bad_pause_names_the_fix(bad: object) -> None:
    with pytest.raises(UserError, match=r"must be 0 to 60 seconds.*such as 0.5"):
        Pauses(paragraph_s=bad)  # type: ignore[arg-type]


def test_the_head_before_the_first_word_is_the_head_pause_however_the_chunk_opens(
    tmp_path: Path,
) -> None:
    from csm_offload.book.quality import leading_silence_s

    rate = 24_000
    t = np.arange(rate) / rate
    word = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    for lead_s in (0.0, 0.3, 2.5):  # none, a breath, more than ACX allows
        chunk = Audio(np.concatenate([np.zeros(int(lead_s * rate), np.float32), word]), rate)
        path = tmp_path / f"lead-{lead_s}.flac"
        with ChapterAssembler(path, lambda _i, c=chunk: c, [True]) as chapter:
            chapter.ready(0)
            chapter.commit()
        made = Audio.decode(path.read_bytes())
        assert leading_silence_s(made) == pytest.approx(Pauses().head_s, abs=0.021)
