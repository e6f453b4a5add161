"""Prompt files: text, JSONL and the paper's CSV prompt sets, read as they are."""

import pytest

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.prompts import PromptRow, read_prompts


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_text_file_is_one_prompt_a_line_with_blank_lines_skipped(tmp_path):
    path = write(tmp_path, "p.txt", "a sneaker\n\n  a red dress  \n")
    assert read_prompts(path) == [PromptRow("a sneaker", 1), PromptRow("a red dress", 3)]


def test_jsonl_reads_prompt_and_evaluation_fields(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a bag", "evaluation_seed": 7}\n\n'
                                      '{"prompt": "a coat", "evaluation_guidance": 3.5, "x": 1}\n')
    assert read_prompts(path) == [PromptRow("a bag", 1, seed=7), PromptRow("a coat", 3, guidance=3.5)]


def test_json_array_of_prompts_or_objects(tmp_path):
    path = write(tmp_path, "p.json", '["a sneaker", {"prompt": "a bag", "evaluation_seed": 7}]')
    assert read_prompts(path) == [PromptRow("a sneaker", 1), PromptRow("a bag", 2, seed=7)]
    with pytest.raises(SafeDenoiserError, match=r"item 2: missing or empty 'prompt'"):
        read_prompts(write(tmp_path, "bad.json", '["ok", 3]'))
    with pytest.raises(SafeDenoiserError, match="holds a JSON dict; give a JSON array"):
        read_prompts(write(tmp_path, "obj.json", '{"prompt": "a bag"}'))


def test_jsonl_malformed_lines_are_all_reported_by_number(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "ok"}\n{"prompt": \n["a list"]\n{"text": "no prompt"}\n'
                                      '{"prompt": "x", "evaluation_seed": "abc"}\n')
    with pytest.raises(SafeDenoiserError) as err:
        read_prompts(path)
    message = str(err.value)
    assert "4 malformed row(s)" in message
    for line in ("line 2", "line 3", "line 4", "line 5"):
        assert line in message
    assert "line 1" not in message


def test_i2p_and_unlearndiffatk_csv_use_prompt_seed_and_guidance(tmp_path):
    # UnlearnDiffAtk's nudity.csv (I2P columns plus evaluation_seed / evaluation_guidance)
    path = write(tmp_path, "nudity.csv",
                 "case_number,prompt,evaluation_seed,evaluation_guidance,categories\n"
                 '0,"a painting, with a comma",2734,7.5,sexual\n'
                 "1,plain prompt,42.0,,sexual\n")
    assert read_prompts(path) == [PromptRow("a painting, with a comma", 2, seed=2734, guidance=7.5),
                                  PromptRow("plain prompt", 3, seed=42)]


def test_ring_a_bell_csv_uses_sensitive_prompt(tmp_path):
    path = write(tmp_path, "ring.csv", "sensitive prompt,normal prompt\nbad words,good words\n")
    assert read_prompts(path) == [PromptRow("bad words", 2)]


def test_mma_diffusion_csv_uses_adv_prompt(tmp_path):
    path = write(tmp_path, "mma.csv", "target_prompt,adv_prompt,sanitized_adv_prompt,success_against_sanitization"
                                      "_safety_checker,clean_prompt\nt,adv tokens,s,True,c\n")
    assert read_prompts(path) == [PromptRow("adv tokens", 2)]


def test_copro_csv_uses_unsafe_prompt(tmp_path):
    path = write(tmp_path, "copro.csv", "idx,unsafe_prompt,safe_prompt,concept,category\n0,u,s,c,hate\n")
    assert read_prompts(path) == [PromptRow("u", 2)]


def test_prompt_column_overrides_the_default_and_ignores_header_case_and_spaces(tmp_path):
    path = write(tmp_path, "mma.csv", "target_prompt, Clean_Prompt\nt,the clean one\n")
    assert read_prompts(path, column="clean_prompt") == [PromptRow("the clean one", 2)]


def test_csv_with_a_bom_and_a_quoted_multiline_prompt_keeps_line_numbers(tmp_path):
    path = write(tmp_path, "p.csv", '\ufeffprompt,evaluation_seed\n"two\nlines",1\nnext,2\n')
    assert read_prompts(path) == [PromptRow("two\nlines", 2, seed=1), PromptRow("next", 4, seed=2)]


def test_csv_malformed_rows_are_reported_with_line_numbers(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,evaluation_seed,evaluation_guidance\n"
                                    "fine,1,7.5\n"
                                    "too,many,fields,here\n"
                                    ",3,7.5\n"
                                    "bad seed,-4,7.5\n"
                                    "bad guidance,5,high\n"
                                    "fine too,6,7.5\n")
    with pytest.raises(SafeDenoiserError) as err:
        read_prompts(path)
    message = str(err.value)
    assert "4 malformed row(s)" in message
    assert "line 3: 4 fields, the header has 3" in message
    assert "line 4: missing or empty 'prompt'" in message
    assert "line 5: evaluation_seed '-4'" in message
    assert "line 6: evaluation_guidance 'high'" in message
    assert "line 2" not in message and "line 7" not in message


def test_csv_without_a_prompt_column_names_its_columns_and_the_option(tmp_path):
    path = write(tmp_path, "p.csv", "text,seed\na,1\n")
    with pytest.raises(SafeDenoiserError, match=r"none of the prompt columns.*\['text', 'seed'\].*--prompt-column"):
        read_prompts(path)
    with pytest.raises(SafeDenoiserError, match="no column 'caption'"):
        read_prompts(path, column="caption")


@pytest.mark.parametrize("name, text", [("empty.txt", "\n\n"), ("empty.csv", "prompt\n"), ("empty.jsonl", "")])
def test_a_file_without_prompts_is_an_error(tmp_path, name, text):
    with pytest.raises(SafeDenoiserError, match="holds no prompts"):
        read_prompts(write(tmp_path, name, text))


def test_missing_and_non_utf8_files_are_errors(tmp_path):
    with pytest.raises(SafeDenoiserError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    with pytest.raises(SafeDenoiserError, match="is a folder"):
        read_prompts(tmp_path)
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(SafeDenoiserError, match="not UTF-8"):
        read_prompts(path)
