"""Whatever bytes an annotation file holds, the parsers answer with rows or a DataError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stadapt.data.indexers import csv as csv_lists
from stadapt.data.indexers import ek100, hmdb51, k400, ssv2, ucf101
from stadapt.errors import DataError

# Text made mostly of the characters that matter to these formats.
tokens = st.sampled_from([" ", "\t", "\r\n", "\n", ",", '"', "/", "..", ".avi", "1", "0", "2", "-3", "07", "١",
                          "Run", "a b", "(x)", "[something]", "\x00", "label", "path", "id", "key", ""])
texts = st.one_of(st.text(max_size=200), st.lists(tokens, max_size=60).map("".join))


def only_data_errors(parse, *args) -> None:
    try:
        parse(*args)
    except DataError as exc:
        assert "\n" not in str(exc)


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(texts)
def test_ucf_lists(text):
    only_data_errors(ucf101.parse_class_index, text, "classInd.txt")
    only_data_errors(ucf101.parse_split_list, "1 Run\r\n" + text, "trainlist01.txt", ["Run", "Jump"])
    only_data_errors(ucf101.parse_split_list, text, "testlist01.txt", ["Run"])


@fuzz
@given(texts)
def test_hmdb_split_files(text):
    only_data_errors(hmdb51.parse_split_file, text, "run_test_split1.txt")


@fuzz
@given(st.lists(st.tuples(texts, texts, texts, texts), max_size=5), st.booleans())
def test_k400_rows(rows, quote):
    q = '"' if quote else ""
    body = "".join(f"{q}{a}{q},{b},{c},{d},train\n" for a, b, c, d in rows)
    only_data_errors(k400.parse_annotations, "label,youtube_id,time_start,time_end,split\n" + body, "train.csv")


@fuzz
@given(texts)
def test_k400_and_user_csv_whole_files(text):
    only_data_errors(k400.parse_annotations, text, "train.csv")
    only_data_errors(lambda: csv_lists.to_candidates(csv_lists.parse_list("path,label\n" + text, "t.csv"), ["a", "b"]))


@fuzz
@given(texts)
def test_ek100_files(text):
    only_data_errors(ek100.parse_classes, "id,key\n" + text, "verbs.csv")
    header = ",".join(ek100.SEGMENT_COLUMNS) + "\n"
    only_data_errors(ek100.parse_segments, header + text, "train.csv", 3, 4)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)


@fuzz
@given(st.one_of(texts, json_values.map(json.dumps)))
def test_ssv2_json(text):
    only_data_errors(ssv2.parse_labels, text, "labels.json")
    only_data_errors(ssv2.parse_entries, text, "train.json", ["Holding something"])
