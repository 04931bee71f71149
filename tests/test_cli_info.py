"""`flexidit-trt info`: the numbers the paper and the checkpoint give for DiT-XL/2."""

from __future__ import annotations

import json

from click.testing import CliRunner

from flexidit_trt.cli import main


def test_info_json_dit_xl():
    result = CliRunner().invoke(main, ["info", "--model", "dit_xl", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    gmacs = {p["patch_size"]: p["gmacs"] for p in facts["patches"]}
    assert abs(gmacs[2] - 118.6) <= 0.5
    assert abs(gmacs[4] - 29.0) <= 0.3
    assert round(facts["base_parameters"] / 1e6, 1) == 675.1
    assert {p["patch_size"]: p["tokens"] for p in facts["patches"]} == {2: 256, 4: 64}


def test_info_table_and_three_patch_sizes():
    result = CliRunner().invoke(main, ["info", "--model", "dit_s", "--patch-sizes", "2,4,8"])
    assert result.exit_code == 0, result.output
    assert "dit_s: depth 12, hidden 384" in result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [2, 4, 8]
    assert [int(r[1]) for r in rows] == [256, 64, 16]


def test_info_bad_inputs():
    runner = CliRunner()
    unknown = runner.invoke(main, ["info", "--model", "dit_q"])
    assert unknown.exit_code == 2 and "unknown model config 'dit_q'" in unknown.output
    for size in ("250", "0", "-16"):  # 0 used to be accepted (0 tokens)
        bad = runner.invoke(main, ["info", "--model", "dit_s", "--image-size", size])
        assert bad.exit_code == 2 and f"image size {size} is not a positive multiple of 8" in bad.output
    indivisible = runner.invoke(
        main, ["info", "--model", "dit_s", "--image-size", "264", "--patch-sizes", "2,4"]
    )
    assert indivisible.exit_code == 2 and "not divisible by patch size 4" in indivisible.output
    bad_list = runner.invoke(main, ["info", "--patch-sizes", "2,x"])
    assert bad_list.exit_code == 2 and "positive integers" in bad_list.output
