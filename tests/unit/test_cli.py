"""The `jetsaga` command line: parsing and the handling of a bad environment."""

from __future__ import annotations

import pytest

from jetsaga import cli


@pytest.mark.parametrize("argv", [["setup"], ["dlq", "list"], ["worker", "order"], ["up"]])
def test_a_bad_environment_variable_exits_2_naming_it(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGA_TIMEOUT_S", "soon")
    assert cli.main(argv) == 2
    assert (
        f"jetsaga {argv[0]}: SAGA_TIMEOUT_S='soon' is not a valid float" in capsys.readouterr().err
    )


def test_dlq_replay_takes_an_id_or_all_but_not_both() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["dlq", "replay", "7"]).id == 7
    assert parser.parse_args(["dlq", "replay", "--all"]).all
    with pytest.raises(SystemExit):
        parser.parse_args(["dlq", "replay", "7", "--all"])
    with pytest.raises(SystemExit):
        parser.parse_args(["dlq", "replay"])
