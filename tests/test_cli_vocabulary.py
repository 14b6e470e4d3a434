"""One vocabulary for all seven commands: the shared options are spelled the same everywhere."""

import shutil

import click
import pytest
from click.testing import CliRunner

from reftok_deploy.cli.bench import main as bench_main
from reftok_deploy.cli.decode import main as decode_main
from reftok_deploy.cli.eval import main as eval_main
from reftok_deploy.cli.export import main as export_main
from reftok_deploy.cli.parity import main as parity_main
from reftok_deploy.cli.run import main as run_main
from reftok_deploy.cli.tokenize import main as tokenize_main
from reftok_deploy.cli.train import main as train_main
from tests.conftest import moving_still, write_video

COMMANDS = {"reftok-train": train_main, "reftok-eval": eval_main, "reftok-export": export_main,
            "reftok-parity": parity_main, "reftok-bench": bench_main, "reftok-run": run_main,
            "reftok-decode": decode_main, "reftok-tokenize": tokenize_main}
WRITES_OUTPUT = {"reftok-train", "reftok-export", "reftok-run", "reftok-decode", "reftok-tokenize"}
READS_VIDEOS = {"reftok-eval", "reftok-parity", "reftok-bench", "reftok-run"}
LIMITS_GOPS = {"reftok-eval", "reftok-export", "reftok-parity", "reftok-bench"}
TAKES_CHECKPOINT = {"reftok-eval", "reftok-export", "reftok-parity", "reftok-bench", "reftok-run", "reftok-decode",
                    "reftok-tokenize"}
OLD_SPELLINGS = ("--out", "--gops")


def shown_options(command: click.Command) -> dict[str, tuple[str, ...]]:
    """Spelling shown in --help -> (all spellings of that option); hidden aliases are not keys."""
    ctx = click.Context(command, info_name="x", **command.context_settings)
    shown = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None:
            continue
        words = set(record[0].replace(",", " ").replace("/", " ").split())
        for spelling in param.opts + param.secondary_opts:
            if spelling in words:
                shown[spelling] = tuple(param.opts)
        assert record[1].strip(), f"{param.opts} has no help text"
    return shown


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_option_names(name):
    command = COMMANDS[name]
    options = shown_options(command)
    for spelling in ("-h", "--help", "-v", "--verbose", "--threads", "--json"):
        assert spelling in options, f"{name} has no {spelling}"
    assert ("-o" in options and "--output" in options) == (name in WRITES_OUTPUT), name
    if "-o" in options:
        assert options["-o"][:2] == ("-o", "--output")
    assert ("--video" in options) == (name in READS_VIDEOS), name
    assert ("--max-gops" in options) == (name in LIMITS_GOPS), name
    assert ("--checkpoint" in options) == (name in TAKES_CHECKPOINT), name
    help_text = CliRunner().invoke(command, ["--help"]).output
    for old in OLD_SPELLINGS:
        assert f"{old} " not in help_text and f"{old}," not in help_text, f"{name} --help shows {old}"
    usage = help_text.splitlines()[0]
    assert "VIDEO" not in usage, f"{name} still takes videos as arguments: {usage}"


def test_old_spellings_still_parse():
    ctx = click.Context(train_main)
    parsed = train_main.make_parser(ctx).parse_args(["--out", "run", "data"])[0]
    assert parsed["output"] == "run"
    ctx = click.Context(bench_main)
    assert bench_main.make_parser(ctx).parse_args(["--gops", "3", "folder"])[0]["max_gops"] == "3"
    ctx = click.Context(export_main)
    assert export_main.make_parser(ctx).parse_args(["--out", "dir"])[0]["output"] == "dir"


@pytest.mark.parametrize("name", sorted(WRITES_OUTPUT))
def test_a_misspelt_option_suggests_current_spellings_only(name):
    result = CliRunner().invoke(COMMANDS[name], ["--ou", "x"], standalone_mode=True)
    message = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2 and "'--output'" in message and "'--out'" not in message, message


def test_checkpoint_takes_the_run_folder_train_wrote(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "checkpoint")
    clip = write_video(tmp_path / "clip.avi", moving_still("chelsea", 9, 32))
    result = CliRunner().invoke(run_main, ["--video", str(clip), "--checkpoint", str(run), "--backend", "torch",
                                           "--no-display", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(eval_main, ["--video", str(clip), "--checkpoint", str(run), "--no-twin", "--no-x264",
                                            "--size", "32", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(eval_main, [str(clip), "--checkpoint", str(run), "--no-twin", "--no-x264",
                                            "--size", "32", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output  # positional videos: the old spelling, for one release


@pytest.mark.parametrize("verbose", [False, True])
def test_a_command_run_in_process_leaves_logging_and_warnings_as_they_were(verbose):
    import logging
    import warnings

    from reftok_deploy.cli.options import LIBRARY_LOGGERS

    library = logging.getLogger(LIBRARY_LOGGERS[0])
    level = library.level
    library.setLevel(logging.WARNING)  # not DEBUG: torch's exporter misbehaves with debug logging on
    try:
        root_handlers, filters = logging.getLogger().handlers[:], list(warnings.filters)
        result = CliRunner().invoke(eval_main, (["-v"] if verbose else []) + ["--video", "/no/such/clip.mp4"])
        assert result.exit_code == 2
        assert library.level == logging.WARNING and logging.getLogger().handlers == root_handlers
        assert list(warnings.filters) == filters
    finally:
        library.setLevel(level)


@pytest.mark.parametrize("args, spread", [
    (["--calib-data", "a", "b", "-o", "x", "c"], ["--calib-data", "a", "--calib-data", "b", "-o", "x", "c"]),
    (["--calib-data=a", "b", "--int8"], ["--calib-data=a", "--calib-data", "b", "--int8"]),
    (["--calib-data", "-odd-name", "b"], ["--calib-data", "-odd-name", "--calib-data", "b"]),
    (["x", "--calib-data", "a", "--", "b"], ["x", "--calib-data", "a", "--", "b"]),
])
def test_many_values_option_takes_only_the_words_right_after_it(args, spread):
    from reftok_deploy.cli import spread_many_values

    assert spread_many_values(args, {"--calib-data"}) == spread
