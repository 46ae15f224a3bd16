"""A corpus of malformed config files (issue 10): each entry is the file's content (str, written as
UTF-8, or bytes, written as is) and every one must be refused by `unetc check` and `unetc emit`
with exit 2 and one line naming the file. Listed by hand where the case is specific, generated for
every integer key x every kind of bad value."""
from __future__ import annotations

MIB = 1 << 20
INT_KEYS = {  # key -> (minimum, maximum) as documented in README "Limits and guarantees"
    "in_c": (1, 65536), "out_c": (1, 65536), "base_c": (1, 65536),
    "pool_kernel": (1, 1024), "pool_stride": (1, 1024), "conv_kernel": (1, 1024), "conv_stride": (1, 1024),
    "conv_padding": (0, 1024), "up_kernel": (1, 1024), "up_stride": (1, 1024), "up_padding": (0, 1024),
    "head_kernel": (1, 1024), "head_stride": (1, 1024), "head_padding": (0, 1024),
}
SIZE_KEYS = {"in_h": (1, 1 << 20), "in_w": (1, 1 << 20)}

# value text -> what is wrong with it, for any integer key (sizes also take symbol names)
BAD_INT_VALUES = {
    "negative": "-1", "float": "3.5", "float_whole": "2.0", "bool": "true", "bool_yes": "yes",
    "string": "'3'", "huge": "1" + "0" * 30, "null": "~", "empty": "", "list": "[1, 2]",
    "mapping": "{a: 1}", "octal": "010", "sexagesimal": "1:30", "hex": "0x10", "underscore": "1_0",
    "plus": "+3", "inf": ".inf",
}
BAD_SIZE_STRINGS = {"leading_digit": "2W", "space": "'H W'", "reserved": "_H", "dunder": "H__W",
                    "keyword": "lambda", "c_keyword": "int", "long": "H" * 65}

BAD_NAMES = {
    "digit_first": "1bad", "dash": "my-net", "space": "'a b'", "stdint": "_STDINT", "string_h": "_STRING",
    "dunder": "__init__", "inner_dunder": "a__b", "underscore": "_x", "c_while": "while", "c_int": "int",
    "py_class": "class", "py_none": "None", "py_true": "'True'", "c_bool": "_Bool", "restrict": "restrict",
    "inline": "inline", "len65": "n" * 65, "len225": "n" * 225, "empty": "''", "non_ascii": "ünet",
    "dot": "a.b", "slash": "a/b", "dotdot": "../evil", "numpy": "numpy", "os": "os",
    "newline": '"a\\nb"', "shell": "'$(id)'", "semicolon": "'a;rm -rf x'", "quote": "'a\"b'",
    "number": "3", "bool": "true", "null": "~", "list": "[a]", "mapping": "{a: 1}",
}

HAND: dict[str, str | bytes] = {
    # issue 10 item 3, as reported
    "nonscalar_key": "? [a, b]\n: 1\n",
    "merge_key": "<<: {in_c: 3}\n",
    "merge_key_alias": "base: &b {in_c: 3}\n<<: *b\n",
    "recursive_anchor": "a: &x [*x]\n",
    "recursive_anchor_map": "in_c: &x {a: *x}\n",
    "tag_int_abc": "base_c: !!int abc\n",
    "tag_bool_maybe": "base_c: !!bool maybe\n",
    "tag_timestamp": "base_c: !!timestamp 2020-13-45\n",
    "tag_local": "in_c: !foo 3\n",
    "tag_python_name": "in_c: !!python/name:os.system\n",
    "int_5000_digits": "in_c: " + "9" * 5000 + "\n",
    "yaml11_octal": "in_h: 010\n",
    "yaml11_sexagesimal": "in_h: 1:30\n",
    # more tags
    "tag_python_apply": "in_c: !!python/object/apply:os.system ['id']\n",
    "tag_binary": "name: !!binary aGVsbG8=\n",
    "tag_str_on_int": "in_c: !!str 3\n",
    "tag_int_on_valid": "in_c: !!int 3\n",
    "tag_float": "in_c: !!float 1\n",
    "tag_null": "in_c: !!null ''\n",
    "tag_set": "in_c: !!set {a}\n",
    "tag_omap": "in_c: !!omap [{a: 1}]\n",
    "tag_nonspecific": "in_c: ! 3\n",
    "tag_verbatim": "in_c: !<tag:yaml.org,2002:int> 3\n",
    "tag_directive": "%TAG !e! tag:example.com,2000:\n---\nin_c: !e!x 3\n",
    "tag_on_mapping": "!!map {in_c: 3}\n",
    "tag_on_key": "!!str in_c: 3\n",
    "tag_on_name": "name: !!str unet2\n",
    # anchors and aliases
    "anchor_plain": "in_c: &a 3\n",
    "alias_value": "in_c: &a 3\nout_c: *a\n",
    "alias_key": "in_c: &k 3\n*k : 4\n",
    "anchor_on_mapping": "&m {in_c: 3}\n",
    "billion_laughs": "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\n",
    # structure
    "top_list": "- 1\n- 2\n",
    "top_scalar": "in_c 3\n",
    "top_no_space": "in_c:3\n",
    "top_null": "~\n",
    "top_int": "42\n",
    "top_quoted": "'in_c: 3'\n",
    "two_documents": "in_c: 3\n---\nin_c: 4\n",
    "document_then_list": "in_c: 3\n---\n- 1\n",
    "nested_value": "in_c:\n  a: 1\n",
    "nested_list_value": "in_c:\n  - 1\n",
    "key_mapping": "? {a: 1}\n: 1\n",
    "complex_key_scalar": "? in_c\n: [3]\n",
    "indent_error": "in_c: 3\n  out_c: 2\n",
    "unterminated_flow": "in_c: [3\n",
    "unterminated_map": "in_c: {\n",
    "unterminated_dquote": 'name: "unet\n',
    "unterminated_squote": "name: 'unet\n",
    "bad_escape": 'name: "\\q"\n',
    "stray_colon": ": 3\n",
    "only_colon": ":\n",
    "block_scalar_int": "in_c: |\n  3\n",
    "folded_scalar_int": "in_c: >\n  3\n",
    "yaml_version_2": "%YAML 2.0\n---\nin_c: 3\n",
    "yaml_directive_twice": "%YAML 1.1\n%YAML 1.1\n---\nin_c: 3\n",
    "tab_indent": "\tin_c: 3\n",
    "tab_nested": "in_c:\n\t3\n",
    "document_end_garbage": "in_c: 3\n... x\n",
    # duplicate and unknown keys
    "duplicate_key": "in_c: 3\nin_c: 4\n",
    "duplicate_same_value": "base_c: 8\nbase_c: 8\n",
    "duplicate_name": "name: a\nname: b\n",
    "duplicate_quoted": "in_c: 3\n'in_c': 3\n",
    "duplicate_unknown": "zz: 1\nzz: 2\n",
    "unknown_case": "In_C: 3\n",
    "unknown_upper": "BASE_C: 8\n",
    "unknown_dash": "in-c: 3\n",
    "unknown_typo": "base_cc: 8\n",
    "unknown_camel": "inC: 3\n",
    "unknown_source": "source: x.yaml\n",
    "unknown_empty_key": "'': 3\n",
    "unknown_int_key": "1: 2\n",
    "unknown_null_key": "~: 3\n",
    "unknown_bool_key": "true: 3\n",
    "unknown_space_key": "'in_c ': 3\n",
    "unknown_cyrillic": "in_\u0441: 3\n",
    "unknown_zero_width": "in_c\u200b: 3\n",
    "unknown_after_valid": "in_c: 3\nout_c: 2\nbase_c: 8\nfrobnicate: 1\n",
    "unknown_long_key": "k" * 2000 + ": 1\n",
    "long_explicit_key_bad_value": "? " + "k" * 50000 + "\n: 010\n",
    "long_explicit_key_twice": ("? " + "k" * 5000 + "\n: 1\n") * 2,
    "long_tag": "in_c: !" + "x" * 50000 + " 3\n",
    "long_value_name": "name: " + "a-" * 50000 + "\n",
    # dtype / maxpool_backward
    "dtype_float16": "dtype: float16\n",
    "dtype_case": "dtype: Float32\n",
    "dtype_double": "dtype: double\n",
    "dtype_int": "dtype: 32\n",
    "dtype_null": "dtype:\n",
    "dtype_list": "dtype: [float32]\n",
    "dtype_space": "dtype: ' float32'\n",
    "mode_torch": "maxpool_backward: torch\n",
    "mode_upper": "maxpool_backward: PYTORCH\n",
    "mode_null": "maxpool_backward: ~\n",
    "mode_bool": "maxpool_backward: on\n",
    "mode_list": "maxpool_backward: [spec]\n",
    "mode_quoted_case": "maxpool_backward: 'Spec'\n",
    # characters and encodings (bytes where the file is not UTF-8)
    "nul_byte": b"in_c: 3\x00\n",
    "nul_only": b"\x00",
    "nul_in_key": b"in\x00c: 3\n",
    "control_char": "in_c: 3\nname: a\x01b\n",
    "escape_char": "name: \x1b[31mred\n",
    "latin1": b"name: caf\xe9\n",
    "invalid_byte": b"in_c: 3\n\xff\n",
    "overlong_utf8": b"name: \xc0\xaf\n",
    "utf8_surrogate": b"name: \xed\xa0\x80\n",
    "truncated_utf8": b"name: \xe2\x82",
    "utf16_le_bom": "\ufeffin_c: 3\n".encode("utf-16-le"),
    "utf16_be_bom": "\ufeffin_c: 3\n".encode("utf-16-be"),
    "utf32_bom": "\ufeffin_c: 3\n".encode("utf-32"),
    "bom_mid_file": "in_c: 3\n\ufeffout_c: 0\n",
    "bom_then_bad": "\ufeffin_c: 0\n",
    "fullwidth_digit": "in_c: \uff13\n",
    "arabic_digit": "in_c: \u0663\n",
    "line_separator_name": "name: a\u2028b\n",
    # sizes and nesting
    "deep_flow_list": "[" * 100000,
    "deep_flow_map": "{a: " * 20000,
    "deep_flow_value": "in_c: " + "[" * 5000 + "]" * 5000 + "\n",
    "flow_65": "in_c: " + "[" * 65 + "]" * 65 + "\n",
    "deep_block": "in_c:\n" + "".join(" " * i + "a:\n" for i in range(1, 300)),
    "deep_block_list": "".join(" " * i + "- \n" for i in range(300)),
    "many_keys_then_bad": "".join(f"# {i}\n" for i in range(20000)) + "in_c: 0\n",
    "int_100k_digits": "in_h: " + "7" * 100000 + "\n",
    "negative_huge": "in_c: -" + "9" * 5000 + "\n",
    "float_huge": "in_c: 1.0e400\n",
    "float_nan": "in_c: .nan\n",
    "long_line_key": "in_c" + " " * 5000 + ": 3\n",
    "file_2mib": "# " + "a" * (2 * MIB) + "\nin_c: 3\n",
    "file_1mib_plus_1": "#" * MIB + "\n",
    "flow_list_big": "[" + "1, " * 100000 + "1]\n",
    "many_documents": "---\n" * 50000,
}


def _generated() -> dict[str, str]:
    out: dict[str, str] = {}
    for key, (low, high) in {**INT_KEYS, **SIZE_KEYS}.items():
        for kind, text in BAD_INT_VALUES.items():
            out[f"{key}_{kind}"] = f"{key}: {text}\n"
        out[f"{key}_over_limit"] = f"{key}: {high + 1}\n"
        if low - 1 != -1:  # padding keys: "negative" already is below the minimum
            out[f"{key}_below_min"] = f"{key}: {low - 1}\n"
        out[f"{key}_tagged"] = f"{key}: !!int 3\n"
    for key in SIZE_KEYS:
        for kind, text in BAD_SIZE_STRINGS.items():
            out[f"{key}_symbol_{kind}"] = f"{key}: {text}\n"
    for kind, text in BAD_NAMES.items():
        out[f"name_{kind}"] = f"in_c: 1\nname: {text}\n"
    return out


CORPUS: dict[str, str | bytes] = {**HAND, **{k: v for k, v in _generated().items() if v not in HAND.values()}}
