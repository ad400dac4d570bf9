"""The device side of `ladon-serve --token-file`: the one token reader both sides share, the header the client sends,
and the refusals of options that cannot apply (the real server answering with and without the token is in
tests/serve/test_fail_fast.py)."""
import pytest

from ladon_deploy.cli_support import MIN_TOKEN_BYTES, UsageError, read_token, run_command
from ladon_deploy.device.client import request_head
from ladon_deploy.runtime.cli import PROG, main


def test_read_token_strips_whitespace_and_takes_16_bytes_but_not_15(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"  " + b"a" * MIN_TOKEN_BYTES + b"\n")
    assert read_token(str(path)) == b"a" * 16
    path.write_bytes(b"a" * (MIN_TOKEN_BYTES - 1) + b"\n")
    with pytest.raises(UsageError, match="holds 15 bytes of token; use at least 16"):
        read_token(str(path))
    assert read_token(None) is None


@pytest.mark.parametrize("content, message", [(b"two words-0123456789", "printable ASCII without spaces"),
                                              (b"t\xc3\xa9-0123456789abcdef", "printable ASCII without spaces")])
def test_read_token_refuses_what_a_header_cannot_carry(tmp_path, content, message):
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        read_token(str(path), "--token-file")
    with pytest.raises(UsageError, match="cannot read --token-file .*missing"):
        read_token(str(tmp_path / "missing"))


def test_the_request_head_carries_the_token_only_when_given():
    plain = request_head("laptop", 8000, 100)
    signed = request_head("laptop", 8000, 100, token=b"a" * 20)
    assert b"Authorization" not in plain and plain.endswith(b"\r\n\r\n")
    assert signed == plain[:-2] + b"Authorization: Bearer " + b"a" * 20 + b"\r\n\r\n"


@pytest.mark.parametrize("extra, message", [
    ([], "--token-file needs --server URL"),
    (["--server", "udp://127.0.0.1:8600", "--link", "lora-sf6-bw500"], "--token-file is for an HTTP server"),
])
def test_token_file_is_refused_where_no_http_server_reads_it(tmp_path, capsys, extra, message):
    token = tmp_path / "token"
    token.write_text("a" * 20)
    argv = ["mobile", "--bundle", str(tmp_path), "--image", "x.png", "--out", str(tmp_path / "p.ldn"),
            "--token-file", str(token)] + extra
    assert run_command(PROG, main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_unreadable_token_file_is_refused_before_any_work(tmp_path, capsys):
    argv = ["mobile", "--bundle", str(tmp_path / "no-bundle"), "--image", "x.png", "--server",
            "http://127.0.0.1:9", "--token-file", str(tmp_path / "missing")]
    assert run_command(PROG, main, argv) == 2
    assert "cannot read --token-file" in capsys.readouterr().err
