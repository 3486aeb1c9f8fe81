"""Untrusted files, fuzzed for a bounded time: every loader either loads or refuses in one line.

Loaders: pt2.load_program (.pt2), nn.load_checkpoint / nn.export(checkpoint=...) (training
checkpoints), artifact.read_sidecar and runtime.run (the compiled library's JSON sidecar), and
tuning.load_database / open_database (MetaSchedule JSON logs). Inputs are random bytes, random
JSON, truncations and byte flips of valid files, zips with random members, huge lines and sparse
oversized files. Whatever happens: a WrpnError with one line or a successful load, no other
exception, nothing written outside the test's own folders (each example runs with an empty
scratch folder as its working directory, and the folders the files name are checked afterwards).

WRPN_FUZZ_EXAMPLES=N raises the number of examples per fuzz test (default 25).
"""

import base64
import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wrpn_tvm import artifact, build, pt2, runtime
from wrpn_tvm.errors import WrpnError
from wrpn_tvm.nn import export, load_checkpoint
from wrpn_tvm.nn.checkpoint import FORMAT as CHECKPOINT_FORMAT
from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning import load_database
from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE, CorruptLineWarning, open_database
from wrpn_tvm.tuning.log_timing import WARM

EXAMPLES = int(os.environ.get("WRPN_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SPARSE_OVERSIZE = pt2.MAX_PROGRAM_BYTES + 1


def loads_or_refuses_in_one_line(load):
    """Call load(); a WrpnError must be one non-empty line. Returns (value, error)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptLineWarning)
            return load(), None
    except WrpnError as err:
        message = str(err)
        assert message.strip() and "\n" not in message, repr(message)
        return None, err


@contextlib.contextmanager
def writes_nothing_outside(folder: Path, folder_may_change: bool = False):
    """Run in an empty scratch cwd; afterwards the cwd is still empty, `folder` unchanged (every file's
    content, unless it may change) and its parent holds no new entry (where a "../evil" name would land)."""
    before, beside = _snapshot(folder), sorted(os.listdir(folder.parent))
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="wrpn-fuzz-cwd-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)
        assert not os.listdir(scratch), f"wrote into the working directory: {os.listdir(scratch)}"
    assert folder_may_change or _snapshot(folder) == before, f"{folder} changed"
    assert sorted(os.listdir(folder.parent)) == beside, f"wrote beside {folder}"


def _snapshot(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def flip(data: bytes, positions: list, values: list) -> bytes:
    out = bytearray(data)
    for position, value in zip(positions, values):
        out[position % len(out)] = value
    return bytes(out)


flips = st.tuples(st.lists(st.integers(0, 2**31), min_size=1, max_size=8), st.lists(st.integers(0, 255), min_size=8, max_size=8))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
hostile_names = st.sampled_from(["../../evil", "/etc/passwd", "..\\..\\evil", "a/../../../evil", "", ".", "x" * 300, "nul\x00byte"])


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


# ---------------------------------------------------------------------------- .pt2 programs


@pytest.fixture(scope="module")
def program_bytes(tmp_path_factory) -> bytes:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
    path = tmp_path_factory.mktemp("fuzz-program") / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 6, 6),)), str(path))
    return path.read_bytes()


def _load_program_bytes(tmp_path: Path, data: bytes):
    path = tmp_path / "fuzzed.pt2"
    path.write_bytes(data)
    with writes_nothing_outside(tmp_path):
        return loads_or_refuses_in_one_line(lambda: pt2.load_program(path))


@FUZZ
@given(data=st.binary(max_size=2048), zip_magic=st.booleans())
def test_program_random_bytes_are_refused(tmp_path, data, zip_magic):
    _, error = _load_program_bytes(tmp_path, (b"PK\x03\x04" if zip_magic else b"") + data)
    assert error is not None


@FUZZ
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_program_is_refused(tmp_path, program_bytes, fraction):
    _, error = _load_program_bytes(tmp_path, program_bytes[: int(len(program_bytes) * fraction)])
    assert error is not None


@FUZZ
@given(change=flips)
def test_program_byte_flips_load_or_refuse(tmp_path, program_bytes, change):
    _load_program_bytes(tmp_path, flip(program_bytes, *change))


@FUZZ
@given(members=st.lists(st.tuples(st.text(min_size=1, max_size=40) | hostile_names, st.binary(max_size=200)), max_size=6),
       mark_as_program=st.booleans())
def test_zip_with_random_members_is_refused(tmp_path, members, mark_as_program):
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # duplicate member names
        if mark_as_program:
            archive.writestr("model/archive_format", "pt2")
        for name, content in members:
            archive.writestr(name or "empty", content)
    _, error = _load_program_bytes(tmp_path, buffer.getvalue())
    assert error is not None


@FUZZ
@given(name=hostile_names | st.text(min_size=1, max_size=60))
def test_program_member_names_never_become_paths(tmp_path, program_bytes, name):
    """A valid archive plus a member named like a path elsewhere: loading must not write it anywhere."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(program_bytes)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        root = src.namelist()[0].split("/")[0]
        dst.writestr(f"{root}/data/{name}", b"payload")
    _load_program_bytes(tmp_path, buffer.getvalue())


def test_oversized_program_is_refused_before_reading(tmp_path):
    path = sparse_file(tmp_path / "huge.pt2", SPARSE_OVERSIZE)
    with pytest.raises(WrpnError, match="larger than the 4 GiB limit"):
        pt2.load_program(path)


# ---------------------------------------------------------------------------- checkpoints

SMALL_CONFIG = {"model": "smallcnn", "width": 0.25, "abits": 2, "wbits": 2, "num_classes": 10, "in_channels": 1,
                "image_size": 28}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    from wrpn_tvm.nn import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(SMALL_CONFIG["model"], **{k: v for k, v in SMALL_CONFIG.items() if k != "model"})
    path = tmp_path_factory.mktemp("fuzz-checkpoint") / "epoch-0001.pt"
    save_checkpoint(path, config=SMALL_CONFIG, epoch=1, model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                    history=[{"test_accuracy": 0.5}])
    return path.read_bytes()


def _load_checkpoint_bytes(tmp_path: Path, data: bytes):
    path = tmp_path / "epoch-0001.pt"
    path.write_bytes(data)
    with writes_nothing_outside(tmp_path):
        return loads_or_refuses_in_one_line(lambda: load_checkpoint(path))


@FUZZ
@given(data=st.binary(max_size=2048))
def test_checkpoint_random_bytes_are_refused(tmp_path, data):
    assert _load_checkpoint_bytes(tmp_path, data)[1] is not None


@FUZZ
@given(fraction=st.floats(0.0, 0.999), change=flips, flip_it=st.booleans())
def test_checkpoint_truncations_and_flips_load_or_refuse(tmp_path, checkpoint_bytes, fraction, change, flip_it):
    data = flip(checkpoint_bytes, *change) if flip_it else checkpoint_bytes[: int(len(checkpoint_bytes) * fraction)]
    payload, error = _load_checkpoint_bytes(tmp_path, data)
    assert error is not None or payload["format"] == CHECKPOINT_FORMAT


class _Exploit:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/wrpn-fuzz-pwned",))


def test_checkpoint_with_code_in_its_pickle_never_runs_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": _Exploit()}, path)
    with pytest.raises(WrpnError, match="corrupt or not a wrpn-tvm checkpoint"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/wrpn-fuzz-pwned")


@FUZZ
@given(field=st.sampled_from(["config", "model", "epoch", "history", "optimizer"]), value=json_values,
       drop=st.booleans())
def test_checkpoint_with_odd_fields_is_refused_in_one_line(tmp_path, checkpoint_bytes, field, value, drop):
    payload = torch.load(io.BytesIO(checkpoint_bytes), weights_only=True)
    if drop:
        del payload[field]
    else:
        payload[field] = value
    # Its own folder: an export that legitimately succeeds (export needs no optimizer) writes to out/.
    (tmp_path / "checkpoint").mkdir(exist_ok=True)
    path = tmp_path / "checkpoint" / "odd.pt"
    torch.save(payload, path)
    output = tmp_path / "out" / "model.pt2"
    output.parent.mkdir(exist_ok=True)
    with writes_nothing_outside(path.parent):
        loads_or_refuses_in_one_line(lambda: export("smallcnn", 0.25, 2, 2, output, checkpoint=path))


@FUZZ
@example(key="image_size", value=None)
@given(key=st.sampled_from(["model", "width", "abits", "wbits", "num_classes", "in_channels", "image_size"]),
       value=hostile_names | st.integers(-3, 40) | st.floats(-2, 4) | st.none())
def test_checkpoint_config_values_are_checked_not_trusted(tmp_path, checkpoint_bytes, key, value):
    """Names in a checkpoint (the model name) never become paths; bad settings are one-line errors."""
    payload = torch.load(io.BytesIO(checkpoint_bytes), weights_only=True)
    payload["config"][key] = value
    folder = tmp_path / "checkpoint"
    folder.mkdir(exist_ok=True)
    path = folder / "config.pt"
    torch.save(payload, path)
    output = tmp_path / "out" / "model.pt2"
    output.parent.mkdir(exist_ok=True)
    with writes_nothing_outside(folder):
        loads_or_refuses_in_one_line(lambda: export(payload["config"]["model"], None, None, None, output, checkpoint=path))
    assert {p.name for p in output.parent.iterdir()} <= {"model.pt2", "model.json"}


# ---------------------------------------------------------------------------- compiled library sidecars


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-library")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 6, 6),)), str(folder / "tiny.pt2"))
    return build.compile_model(folder / "tiny.pt2", "host", folder / "tiny.so").library


def _run_with_sidecar(library: Path, tmp_path: Path, text: str):
    """A copy of the library with this sidecar text, run once on inputs of the shape the sidecar names (if it can).

    Each example gets a fresh file name: rewriting a library in place while an earlier dlopen still maps it
    crashes the process (the compiler's own writes are atomic renames, so users never meet that).
    """
    copy = Path(tempfile.mkdtemp(dir=tmp_path)) / "model.so"
    copy.write_bytes(library.read_bytes())
    artifact.sidecar_path(copy).write_text(text)

    def load_and_run():
        meta = artifact.read_sidecar(copy)
        return runtime.run(copy, runtime.random_inputs(meta) if _plain_inputs(meta) else [np.zeros((1, 1, 6, 6), "float32")])

    with writes_nothing_outside(tmp_path):
        return loads_or_refuses_in_one_line(load_and_run)


def _plain_inputs(meta) -> bool:
    try:
        return all(np.zeros(spec["shape"], spec["dtype"]).size < 10**6 for spec in meta["inputs"])
    except Exception:  # the fuzzed sidecar's own fault: let runtime.run meet it
        return False


@FUZZ
@given(text=st.text(max_size=300) | json_values.map(json.dumps))
def test_random_sidecars_are_refused(library, tmp_path, text):
    _, error = _run_with_sidecar(library, tmp_path, text)
    assert error is not None


@FUZZ
@given(path=st.sampled_from([("target",), ("target", "json"), ("target", "name"), ("inputs", 0), ("inputs", 0, "shape"),
                             ("inputs", 0, "dtype"), ("inputs", 0, "name"), ("library",), ("versions",)]),
       value=json_values, drop=st.booleans())
def test_sidecar_fields_with_odd_values_load_or_refuse(library, tmp_path, path, value, drop):
    meta = json.loads(artifact.sidecar_path(library).read_text())
    holder = meta
    for step in path[:-1]:
        holder = holder[step]
    if drop:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    _run_with_sidecar(library, tmp_path, json.dumps(meta))


@FUZZ
@given(name=hostile_names)
def test_sidecar_library_name_is_never_a_path(library, tmp_path, name):
    """The sidecar's 'library' field is informational: the runner loads the file it was given, nothing else."""
    meta = json.loads(artifact.sidecar_path(library).read_text())
    meta["library"] = name
    (outputs, error) = _run_with_sidecar(library, tmp_path, json.dumps(meta))
    assert error is None and outputs[0].shape == (1, 2, 4, 4)


def test_oversized_sidecar_is_one_line(library, tmp_path):
    copy = tmp_path / "model.so"
    copy.write_bytes(library.read_bytes())
    sparse_file(artifact.sidecar_path(copy), 64 << 20)
    with pytest.raises(WrpnError) as caught:
        artifact.read_sidecar(copy)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------- tuning logs


def _write_tuning_log(log_dir: Path) -> None:
    """A real MetaSchedule log (one workload, two records for host), written by TVM's own JSONDatabase."""
    import tvm
    from tvm import te
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord

    a = te.placeholder((8, 8), name="A")
    b = te.compute((8, 8), lambda i, j: a[i, j] * 2.0, name="B")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    log_dir.mkdir(parents=True, exist_ok=True)
    database = JSONDatabase(work_dir=str(log_dir), module_equality="structural")
    workload = database.commit_workload(mod)
    for factor in (2, 4):
        sch = tvm.s_tir.Schedule(mod)
        sch.split(sch.get_loops(sch.get_sblock("B"))[0], [None, factor])
        database.commit_tuning_record(
            TuningRecord(sch.trace, workload, [1e-6 * factor], resolve("host").target, ArgInfo.from_prim_func(mod["main"])))


@pytest.fixture(scope="module")
def tuning_log(tmp_path_factory) -> dict:
    log_dir = tmp_path_factory.mktemp("fuzz-log")
    _write_tuning_log(log_dir)
    return {name: (log_dir / name).read_bytes() for name in (WORKLOAD_FILE, RECORD_FILE)}


def _mutate_line(line: bytes, how: str, change, junk: bytes) -> bytes:
    if how == "flip":
        return flip(line, *change) if line else line
    if how == "cut":
        return line[: change[0][0] % max(len(line), 1)]
    if how == "junk":
        return junk
    if how == "json":  # valid JSON in the right shape, wrong content
        return json.dumps([change[0][0] % 3, [str(junk)]]).encode()
    if how == "base64":  # a workload whose encoded module is damaged inside, past the JSON and base64 checks
        try:
            obj = json.loads(line)
            module = base64.b64decode(obj[1]) if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], str) else b""
        except ValueError:  # an earlier edit already broke this line
            return line
        if module:
            return json.dumps([obj[0], base64.b64encode(flip(module, *change)).decode()]).encode()
    return line


log_edits = st.lists(st.tuples(st.sampled_from([WORKLOAD_FILE, RECORD_FILE]), st.integers(0, 3),
                               st.sampled_from(["flip", "cut", "junk", "json", "base64", "duplicate"]), flips,
                               st.binary(max_size=200)), min_size=1, max_size=4)


def _apply_edits(log_dir: Path, original: dict, edits) -> None:
    lines = {name: data.splitlines(keepends=False) for name, data in original.items()}
    for name, index, how, change, junk in edits:
        file_lines = lines[name]
        index %= len(file_lines) + 1
        if index == len(file_lines) or how == "duplicate":
            file_lines.insert(index, file_lines[index % len(file_lines)] if how == "duplicate" else junk)
        else:
            file_lines[index] = _mutate_line(file_lines[index], how, change, junk)
    log_dir.mkdir(parents=True, exist_ok=True)
    for name, file_lines in lines.items():
        (log_dir / name).write_bytes(b"\n".join(file_lines) + b"\n")


@FUZZ
@given(edits=log_edits)
def test_damaged_tuning_logs_load_or_refuse_and_stay_untouched(tmp_path, tuning_log, edits):
    log_dir = tmp_path / "log"
    _apply_edits(log_dir, tuning_log, edits)
    with writes_nothing_outside(tmp_path):
        database, error = loads_or_refuses_in_one_line(lambda: load_database(log_dir, resolve("host")))
    assert error is not None or len(database.get_all_tuning_records()) >= 1


@FUZZ
@example(edits=[(WORKLOAD_FILE, 1, "junk", ([0], [0] * 8), b"")])  # a blank line after the workload
@given(edits=log_edits)
def test_open_database_repairs_damaged_logs_for_metaschedule(tmp_path, tuning_log, edits):
    """A resumed job first drops bad lines; what is left must load in TVM's own JSONDatabase."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    log_dir = tmp_path / "log"
    _apply_edits(log_dir, tuning_log, edits)
    with writes_nothing_outside(log_dir, folder_may_change=True):
        loads_or_refuses_in_one_line(lambda: open_database(log_dir, resolve("host"), WARM))
    assert sorted(p.name for p in log_dir.iterdir()) == sorted([WORKLOAD_FILE, RECORD_FILE])
    reloaded = JSONDatabase(work_dir=str(log_dir), module_equality="structural")
    assert len(reloaded.get_all_tuning_records()) <= 2 + sum(1 for edit in edits if edit[2] == "duplicate")


@FUZZ
@given(data=st.binary(max_size=2048), which=st.sampled_from([WORKLOAD_FILE, RECORD_FILE]))
def test_random_bytes_as_a_tuning_log_are_refused(tmp_path, tuning_log, data, which):
    log_dir = tmp_path / "log"
    log_dir.mkdir(exist_ok=True)
    for name, original in tuning_log.items():
        (log_dir / name).write_bytes(data if name == which else original)
    with writes_nothing_outside(tmp_path):
        _, error = loads_or_refuses_in_one_line(lambda: load_database(log_dir, resolve("host")))
    assert error is not None


@FUZZ
@given(field=st.sampled_from(["mtriple", "mcpu", "kind", "tag"]), name=hostile_names)
def test_target_strings_in_a_tuning_log_are_never_paths(tmp_path, tuning_log, field, name):
    log_dir = tmp_path / "log"
    log_dir.mkdir(exist_ok=True)
    (log_dir / WORKLOAD_FILE).write_bytes(tuning_log[WORKLOAD_FILE])
    records = [json.loads(line) for line in tuning_log[RECORD_FILE].splitlines()]
    for record in records:
        record[1][2][field] = name
    (log_dir / RECORD_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    with writes_nothing_outside(tmp_path):
        loads_or_refuses_in_one_line(lambda: load_database(log_dir, resolve("host")))


def test_huge_line_and_oversized_tuning_log_are_one_line(tmp_path, tuning_log):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / WORKLOAD_FILE).write_bytes(tuning_log[WORKLOAD_FILE] + b'["1", "' + b"A" * (32 << 20) + b'"]\n')
    (log_dir / RECORD_FILE).write_bytes(tuning_log[RECORD_FILE])
    _, error = loads_or_refuses_in_one_line(lambda: load_database(log_dir, resolve("host")))
    assert error is None  # the two good records still load
    sparse_file(log_dir / RECORD_FILE, 64 << 20)
    _, error = loads_or_refuses_in_one_line(lambda: load_database(log_dir, resolve("host")))
    assert error is not None and "no usable tuning records" in str(error)
