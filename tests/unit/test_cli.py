"""The CLI's ``generate`` input checks: a bad file, line or output path exits with the
path (and line) before any model loads (no traceback, no lost batch)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from thinkstream import cli


def _generate(tmp_path, lines: list[str] | None, output: str = "out.jsonl") -> str:
    src = tmp_path / "in.jsonl"
    if lines is not None:
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:  # the model is never loaded: it exits first
        cli.main(["generate", "--input", str(src), "--output", str(tmp_path / output)])
    return str(exc.value.code)


def test_a_missing_input_file_is_a_message_not_a_traceback(tmp_path) -> None:
    assert _generate(tmp_path, None) == f"{tmp_path / 'in.jsonl'}: cannot read: No such file or directory"


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "invalid JSON: Expecting value"),
    ('{"foo": 1}', "each line needs a 'prompt' or 'messages' field"),
    ('{"prompt": ""}', "'prompt' must be a non-empty string or list of token ids"),
    ('{"prompt": [1, 2.5]}', "'prompt' must be a non-empty string or list of token ids"),
    ('{"prompt": {"a": 1}}', "'prompt' must be a non-empty string or list of token ids"),
    ('{"messages": []}', "'messages' must be a non-empty list of messages"),
    ('{"messages": "hi"}', "'messages' must be a non-empty list of messages"),
    # both, or a field the CLI would ignore (a per-line max_tokens was silently dropped)
    ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}',
     "a line takes 'prompt' or 'messages', not both"),
    ('{"prompt": "a", "max_tokens": 2, "temperature": 0}',
     "unknown field(s) 'max_tokens', 'temperature': a line takes 'prompt' or 'messages' and "
     "'id'; sampling is set by the flags (--max-tokens, --temperature, ...)"),
])
def test_a_bad_line_names_its_number(tmp_path, line: str, message: str) -> None:
    lines = ['{"prompt": "ok"}', "", line]
    assert _generate(tmp_path, lines) == f"{tmp_path / 'in.jsonl'}:3: {message}"


def test_an_output_that_cannot_be_written_is_refused_before_the_batch(tmp_path) -> None:
    (tmp_path / "a_dir").mkdir()
    for output in ("a_dir", "missing_dir/out.jsonl"):
        message = _generate(tmp_path, ['{"prompt": "ok"}'], output)
        assert message == f"{tmp_path / output}: cannot write the output here"


def test_good_lines_are_kept(tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a", "id": 1}\n\n{"prompt": [1, 2]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    assert [(n, r.get("id")) for n, r in cli._read_prompts(str(src))] == [(1, 1), (3, None),
                                                                          (4, None)]


def test_a_line_only_the_model_refuses_names_its_number(monkeypatch, tmp_path) -> None:
    """A prompt past the context (the tiny model's: 512 tokens) or a chat line for a model
    without a chat template failed the whole batch with a message naming no line."""
    from helpers.tiny import tiny_checkpoint, tiny_tokenizer

    from thinkstream.llm import LLM

    tok = tiny_tokenizer()
    tok.chat_template = None
    no_template = dataclasses.replace(tiny_checkpoint(), tokenizer=tok)
    monkeypatch.setattr(cli, "_llm", lambda args: LLM(checkpoint=no_template, num_blocks=64,
                                                      block_size=4))
    too_long = json.dumps({"prompt": [5] + [6] * 600})
    for bad, message in [(too_long, "prompt: 601 tokens leave no room to generate"),
                         ('{"messages": [{"role": "user", "content": "hi"}]}',
                          "this model has no chat template")]:
        src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text('{"prompt": "ok"}\n\n' + bad + "\n", encoding="utf-8")
        with pytest.raises(SystemExit) as exc:
            cli.main(["generate", "--input", str(src), "--output", str(out), "--max-tokens", "8"])
        assert str(exc.value.code).startswith(f"{src}:3: {message}")
        assert not out.exists()


@pytest.mark.parametrize("command", [["run", "Hi"], ["chat"]])
def test_a_bad_sampling_flag_is_refused_before_the_model_loads(monkeypatch, capsys,
                                                               command: list[str]) -> None:
    def no_model(args):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(cli, "_llm", no_model)
    assert cli.main([*command, "--max-tokens", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "thinkstream: error: max_tokens must be >= 1, got -1"


@pytest.mark.parametrize("replicas", ["0", "-1"])
def test_serve_refuses_fewer_than_one_replica(monkeypatch, capsys, replicas: str) -> None:
    """``--replicas 0`` once served one engine as if the flag were absent."""
    from thinkstream.engine import llm_engine

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(llm_engine, "LLMEngine", no_model)
    assert cli.main(["serve", "--replicas", replicas]) == 2
    assert capsys.readouterr().err.strip() == f"thinkstream: error: replicas must be >= 1, got {replicas}"


def test_help_says_what_kv_cache_dtype_auto_picks(capsys) -> None:
    """``auto`` is bfloat16 on AVX512_BF16 / AMX CPUs (``thinkstream info`` shows it there):
    the help said "the model's dtype" only."""
    with pytest.raises(SystemExit):
        cli.main(["info", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (default): the model's dtype, but bfloat16 under --dtype auto on CPUs with " \
           "bfloat16 dot products (AVX512_BF16, AMX" in text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_serve_refuses_a_port_in_use_before_the_model_loads(monkeypatch, capsys) -> None:
    """A port in use was uvicorn's error (exit 3) after the model had loaded."""
    import socket

    from thinkstream.engine import llm_engine

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was taken")

    monkeypatch.setattr(llm_engine, "LLMEngine", no_model)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"thinkstream: error: --host 127.0.0.1 --port {port}: cannot listen there "
        "(Address already in use)")


def test_output_dash_is_stdout_and_a_row_without_id_gets_its_line_number(
        monkeypatch, capsys, tmp_path) -> None:
    """``--output -`` wrote a file named ``-``, and a row without ``"id"`` got ``null``."""
    from helpers.tiny import tiny_checkpoint

    from thinkstream.llm import LLM

    monkeypatch.setattr(cli, "_llm", lambda args: LLM(checkpoint=tiny_checkpoint(),
                                                      num_blocks=32, block_size=4))
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": [5, 6], "id": "a"}\n\n{"prompt": [7, 8]}\n', encoding="utf-8")
    assert cli.main(["generate", "--input", str(src), "--output", "-", "--max-tokens", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["completion_tokens"], r["finish_reason"]) for r in rows] == [
        ("a", 2, "length"), (3, 2, "length")]
    assert not (tmp_path / "-").exists()


class _Interrupted:
    """A model whose answer the user stops with Ctrl-C."""

    class tokenizer:  # noqa: N801 - stands in for the attribute
        chat_template = None

    def stream(self, prompt, params):
        raise KeyboardInterrupt


@pytest.mark.parametrize("command", [["run", "Hi"], ["chat"]])
def test_ctrl_c_ends_quietly_with_130(monkeypatch, capsys, command: list[str]) -> None:
    """Ctrl-C in ``run`` (mid-answer) or ``chat`` (at the prompt) printed a
    KeyboardInterrupt traceback; now a newline and exit status 130, as a shell expects."""
    monkeypatch.setattr(cli, "_llm", lambda args: _Interrupted())
    monkeypatch.setattr("builtins.input", lambda prompt="": (_ for _ in ()).throw(
        KeyboardInterrupt))
    try:
        rc = cli.main(command)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): a traceback for a Ctrl-C")
    assert rc == 130
    assert "Traceback" not in capsys.readouterr().err
