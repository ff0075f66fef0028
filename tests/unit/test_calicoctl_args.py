"""calicoctl's argument parsing (``libcalico.cli.calicoctl.main``): Calico's verbs and flags,
and every usage error as one line with exit status 1."""

from __future__ import annotations

import io

import pytest

from libcalico.cli.calicoctl.main import UsageError, parse_args, run


def test_apply_file_and_connection_options_before_or_after_the_verb() -> None:
    args = parse_args(["--datastore", "unix:///a.sock", "apply", "-f", "pool.yaml"])
    assert (args.command, args.filename, args.datastore) == ("apply", "pool.yaml", "unix:///a.sock")
    args = parse_args(["apply", "-f", "-", "--datastore", "unix:///b.sock", "-c", "x.cfg"])
    assert (args.filename, args.datastore, args.config) == ("-", "unix:///b.sock", "x.cfg")
    assert args.namespace == ""


def test_get_defaults_and_flags() -> None:
    args = parse_args(["get", "ippools"])
    assert (args.kind, args.names, args.output, args.all_namespaces) == ("ippools", [], "ps", False)
    args = parse_args(["get", "networkpolicy", "a", "b", "-o", "yaml", "-n", "ns1"])
    assert (args.names, args.output, args.namespace) == (["a", "b"], "yaml", "ns1")
    assert parse_args(["get", "wep", "-A"]).all_namespaces
    assert parse_args(["get", "wep", "-a"]).all_namespaces  # calicoctl's old spelling
    assert parse_args(["get", "ippool", "-o", "yml"]).output == "yaml"
    assert parse_args(["get", "-f", "x.yaml", "-o", "wide"]).filename == "x.yaml"


@pytest.mark.parametrize(
    "argv",
    [
        ["get"],
        ["get", "ippool", "-f", "x.yaml"],
        ["get", "ippool", "-o", "table"],
        ["apply"],
        ["delete", "ippool"],
        ["label", "nodes", "n1", "a=b", "--overwrite", "--remove"],
        ["patch", "ippool", "p"],
        ["frobnicate"],
        ["ipam"],
        [],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_usage_error_is_one_line_and_exit_1() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["get", "ippool", "-o", "table"], out, err) == 1
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Invalid option: 'calicoctl get ippool -o table'")
    assert "unrecognized output format 'table'" in lines[0]


def test_patch_label_delete_and_ipam_shapes() -> None:
    args = parse_args(["patch", "ippool", "p1", "-p", '{"spec":{"natOutgoing":false}}'])
    assert (args.kind, args.name, args.type) == ("ippool", "p1", "strategic")
    args = parse_args(["label", "nodes", "n1", "rr=true", "--overwrite"])
    assert (args.label, args.overwrite, args.remove) == ("rr=true", True, False)
    args = parse_args(["delete", "ippool", "a", "b", "--skip-not-exists"])
    assert (args.names, args.skip_not_exists) == (["a", "b"], True)
    args = parse_args(["ipam", "show", "--show-blocks"])
    assert (args.ipam_command, args.show_blocks) == ("show", True)
    with pytest.raises(UsageError):
        parse_args(["ipam", "show", "--show-blocks", "--show-borrowed"])


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["get", "--help"])
    assert exc.value.code == 0
    assert "--all-namespaces" in capsys.readouterr().out
