"""data.py: the paper's file format, and one clear error line (file, row, field) for each kind of bad input."""
import json
import re

import pytest

import data


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_reads_paper_columns_and_plain_prompts(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"content": [{"role": "user", "content": "hi"}], "teacher_response": "hello"},
        {"prompt": "tell me about cats .", "response": "cats are furry ."},
        {"content": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]}])
    recs = data.load_records(p)
    assert recs[0] == {"messages": [{"role": "user", "content": "hi"}], "teacher_response": "hello"}
    assert recs[1]["messages"] == [{"role": "user", "content": "tell me about cats ."}]
    assert recs[1]["teacher_response"] == "cats are furry ." and recs[2]["teacher_response"] is None


def test_reads_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"content": [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]],
                      "teacher_response": ["a1", "a2"]})
    pq.write_table(table, tmp_path / "d.parquet")
    recs = data.load_records(str(tmp_path / "d.parquet"), need_response=True)
    assert [r["teacher_response"] for r in recs] == ["a1", "a2"]
    assert recs[1]["messages"] == [{"role": "user", "content": "q2"}]


@pytest.mark.parametrize("rows, needle", [
    (['{"prompt": "ok"}', '{"prompt": "broken'], "line 2: malformed JSON"),
    ([{"question": "x"}], "row 1: missing field 'content'"),
    ([{"prompt": "  "}], "row 1: field 'prompt': empty prompt"),
    ([{"content": [{"role": "wizard", "content": "x"}]}], "field 'content'[0].role: unknown role 'wizard'"),
    ([{"content": "just a string"}], "field 'content': expected a list"),
    ([{"content": [{"role": "user", "content": ""}]}], "field 'content': empty prompt"),
    ([{"prompt": "x", "teacher_response": 3}], "field 'teacher_response': expected a string"),
])
def test_bad_input_names_file_row_and_field(tmp_path, rows, needle):
    p = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(data.DataError) as e:
        data.load_records(p)
    assert needle in str(e.value) and "bad.jsonl" in str(e.value)


def test_missing_response_column_when_required(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(data.DataError, match="row 1: missing field 'teacher_response'"):
        data.load_records(p, need_response=True)


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(data.DataError, match="file not found"):
        data.load_records(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(data.DataError, match="unsupported file type"):
        data.load_records(str(tmp_path / "x.csv"))


def test_non_utf8_folder_and_broken_parquet_are_one_line_errors(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(data.DataError, match=r"latin1.jsonl: line 2: not UTF-8 text"):
        data.load_records(str(p))
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(data.DataError, match=r"x.jsonl: is a folder"):
        data.load_records(str(tmp_path / "x.jsonl"))
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not a parquet file")
    for name in ("empty.parquet", "junk.parquet"):
        with pytest.raises(data.DataError, match=f"{name}: not a readable parquet file") as e:
            data.load_records(str(tmp_path / name))
        assert "\n" not in str(e.value)


def test_duplicate_prompts_are_counted(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"},
                                           {"content": [{"role": "user", "content": "a"}]}])
    assert data.duplicate_prompts(data.load_records(p)) == 2


def test_a_lone_surrogate_is_refused_when_the_file_is_read(tmp_path):
    """JSON may spell a lone surrogate ("\\ud800"); no request can carry it, so it is refused here, not retried."""
    for row, field in (('{"prompt": "tell me about \\ud800 cats ."}', "field 'prompt'"),
                       ('{"content": [{"role": "user", "content": "hi \\udfff"}]}', "field 'content'[0].content"),
                       ('{"prompt": "hi", "teacher_response": "ok \\ud83d"}', "field 'teacher_response'")):
        p = tmp_path / "bad.jsonl"
        p.write_text('{"prompt": "fine"}\n' + row + "\n")
        with pytest.raises(data.DataError,
                           match=rf"bad.jsonl: row 2: {re.escape(field)}: character \d+ is not valid Unicode"):
            data.load_records(str(p))
