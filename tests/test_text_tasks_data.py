"""Natural-language data: bAbI, SQuAD and phonebook loaders and generators, and the SQuAD metric.

The bAbI stories are checked by an independent tracker written here from the sentences alone;
the loaders run on small fixtures written here in the hub formats (BABILong columns, official
SQuAD JSON, hub SQuAD rows, phonebook columns).
"""
import json
import re
import socket
from collections import Counter

import datasets
import huggingface_hub.constants
import pytest

import babi_utils as babi
import phonebook_utils as pb
import squad_utils as sq
import text_metrics as tm
from text_qa_data import TextDataError, carve_split, text_dataset


@pytest.fixture
def offline(monkeypatch):
    """The hub is unreachable and says so at once (as with HF_HUB_OFFLINE=1 before import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def as_dicts(dd):
    return {split: ds.to_dict() for split, ds in dd.items()}


def save(tmp_path, name, splits: dict[str, dict]):
    path = tmp_path / name
    datasets.DatasetDict({s: datasets.Dataset.from_dict(c) for s, c in splits.items()}).save_to_disk(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# An independent bAbI world tracker: reads the facts as text and answers the question.
# ---------------------------------------------------------------------------------------------

MOVE = re.compile(r"(\w+) (?:went|moved|walked|travelled|headed|ran) to the (\w+)\.")
PICK = re.compile(r"(\w+) (?:picked up|grabbed|took) the (\w+)\.")
DROP = re.compile(r"(\w+) (?:dropped|put down|left) the (\w+)\.")
GIVE = re.compile(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.")
REL = re.compile(r"The (\w+) is (north|south|east|west) of the (\w+)\.")
STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
INVERSE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def the_only(answers: set):
    assert len(answers) == 1, f"the story does not determine one answer: {answers}"
    return next(iter(answers))


def answer_relations(facts, question):
    rel = set()
    for f in facts:
        x, d, y = REL.fullmatch(f).groups()
        rel |= {(x, d, y), (y, INVERSE[d], x)}
    pos = {}  # the layout must fit on a grid with distinct places
    for x, d, y in sorted(rel, key=lambda r: r[2] not in pos) * 3:
        if y in pos and x not in pos:
            pos[x] = (pos[y][0] + STEP[d][0], pos[y][1] + STEP[d][1])
        elif not pos:
            pos[y] = (0, 0)
    assert len(set(pos.values())) == len(pos) == len({p for r in rel for p in (r[0], r[2])})
    if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
        return the_only({x for x, d, y in rel if (d, y) == m.groups()})
    x, d = re.fullmatch(r"What is the (\w+) (\w+) of\?", question).groups()
    return the_only({y for x2, d2, y in rel if (x2, d2) == (x, d)})


def answer_story(facts, question):
    if REL.fullmatch(facts[0]):
        return answer_relations(facts, question)
    at, carrier, lies, trail, gifts = {}, {}, {}, {}, []
    for f in facts:
        if m := MOVE.fullmatch(f):
            p, place = m.groups()
            assert at.get(p) != place, f"{f}: already there"
            at[p] = place
            for o, c in carrier.items():
                if c == p:
                    trail[o].append(place)
        elif m := PICK.fullmatch(f):
            p, o = m.groups()
            assert p in at and o not in carrier and lies.get(o, at[p]) == at[p], f"{f}: impossible"
            lies.pop(o, None)
            carrier[o] = p
            trail.setdefault(o, [at[p]])
        elif m := DROP.fullmatch(f):
            p, o = m.groups()
            assert carrier.pop(o) == p, f"{f}: {p} does not hold the {o}"
            lies[o] = at[p]
        elif m := GIVE.fullmatch(f):
            g, o, r = m.groups()
            assert carrier[o] == g and g != r and at[g] == at[r], f"{f}: impossible"
            carrier[o] = r
            gifts.append((g, o, r))
        else:
            raise AssertionError(f"unparsed fact {f!r}")
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return at[m.group(1)]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        o = m.group(1)
        return at[carrier[o]] if o in carrier else lies[o]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        places, place = trail[m.group(1)], m.group(2)
        assert places.count(place) == 1 and places.index(place) > 0
        return places[places.index(place) - 1]
    patterns = [(r"What did (\w+) give to (\w+)\?", lambda g, o, r, a, b: (g, r) == (a, b), 1),
                (r"Who gave the (\w+) to (\w+)\?", lambda g, o, r, a, b: (o, r) == (a, b), 0),
                (r"Who did (\w+) give the (\w+) to\?", lambda g, o, r, a, b: (g, o) == (a, b), 2),
                (r"Who gave the (\w+)\?", lambda g, o, r, a: o == a, 0),
                (r"Who received the (\w+)\?", lambda g, o, r, a: o == a, 2)]
    for pattern, matches, slot in patterns:
        if m := re.fullmatch(pattern, question):
            return the_only({gift[slot] for gift in gifts if matches(*gift, *m.groups())})
    raise AssertionError(f"unparsed question {question!r}")


def check_babi_sample(s):
    question = re.fullmatch(r"Question: (.+)\nAnswer:", s["query"]).group(1)
    assert s["answers"] == [s["target"]]
    assert answer_story(s["context"].split("\n"), question) == s["target"]


@pytest.mark.parametrize("context, question, answer", [
    ("Alma went to the attic.\nBoris ran to the porch.\nAlma moved to the cellar.", "Where is Alma?", "cellar"),
    ("Alma went to the attic.\nAlma took the violin.\nAlma ran to the porch.", "Where is the violin?", "porch"),
    ("Alma went to the attic.\nAlma took the violin.\nAlma dropped the violin.\nAlma ran to the porch.",
     "Where is the violin?", "attic"),
    ("Alma went to the attic.\nAlma took the violin.\nAlma ran to the porch.\nAlma went to the cellar.",
     "Where was the violin before the cellar?", "porch"),
    ("The attic is north of the porch.\nThe cellar is east of the attic.", "What is the porch south of?", "attic"),
    ("The attic is north of the porch.\nThe cellar is east of the attic.", "What is west of the cellar?", "attic"),
    ("Alma went to the attic.\nAlma took the violin.\nBoris went to the attic.\nAlma gave the violin to Boris.",
     "Who received the violin?", "Boris"),
])
def test_tracker_on_hand_made_stories(context, question, answer):
    check_babi_sample({"context": context, "query": f"Question: {question}\nAnswer:", "target": answer,
                       "answers": [answer]})


def test_tracker_rejects_wrong_answers_and_impossible_stories():
    with pytest.raises(AssertionError):
        check_babi_sample({"context": "Alma went to the attic.", "query": "Question: Where is Alma?\nAnswer:",
                           "target": "porch", "answers": ["porch"]})
    with pytest.raises(AssertionError, match="impossible"):  # Boris is elsewhere
        answer_story(["Alma went to the attic.", "Alma took the violin.", "Boris went to the porch.",
                      "Alma gave the violin to Boris."], "Who received the violin?")


@pytest.mark.parametrize("task", babi.BABI_TASKS)
def test_babi_answers_follow_from_the_facts(task):
    dd = babi.generate_babi(task, 150, 30, 30, seed=1)
    questions = Counter()
    for split in ("train", "valid", "test"):
        for s in dd[split]:
            check_babi_sample(s)
            questions[re.sub(r"[A-Z]\w+|the \w+", "X", s["query"])] += 1
    lo, hi = babi.BabiConfig(task).fact_range
    n_facts = {s.count("\n") + 1 for s in dd["train"]["context"]}
    assert min(n_facts) >= lo and max(n_facts) <= hi and (task == "qa4" or len(n_facts) > 3)
    assert len(questions) >= {"qa4": 2, "qa5": 4}.get(task, 1), questions  # several question forms


def test_babi_is_reproducible_and_the_splits_disjoint():
    a = babi.generate_babi("qa2", 200, 50, 50, seed=3)
    b = babi.generate_babi("qa2", 200, 50, 50, seed=3)
    c = babi.generate_babi("qa2", 200, 50, 50, seed=4)
    for split in a:
        assert a[split].data.table.equals(b[split].data.table)
    assert a["train"]["context"] != c["train"]["context"]
    assert babi.generate_babi("qa3", 5, 0, 0, seed=3)["train"]["context"] != a["train"]["context"][:5]
    train, valid = set(a["train"]["context"]), set(a["valid"]["context"])
    assert not train & valid and not (train | valid) & set(a["test"]["context"])


def test_babi_redraws_contexts_of_earlier_splits(monkeypatch):
    monkeypatch.setattr(babi, "PLACES", ("attic", "cellar", "porch"))  # qa4 then has 288 contexts
    dd, card = babi._generate(babi.BabiConfig("qa4", 100, 40, 40))
    train, valid = set(dd["train"]["context"]), set(dd["valid"]["context"])
    assert not train & valid and not (train | valid) & set(dd["test"]["context"])
    assert card["redrawn_for_overlap_with_earlier_splits"]["valid"] > 0


def test_babi_gives_up_on_stories_that_ask_nothing(monkeypatch):
    monkeypatch.setattr(babi, "_questions", lambda task, world: [])
    with pytest.raises(TextDataError, match="qa2: 50 stories of 4-20 facts in a row determined no question"):
        babi.babi_sample("qa2", babi.random.Random(0), (4, 20), max_tries=50)


def test_babi_says_when_the_splits_cannot_be_disjoint():
    class Everything(set):
        def __contains__(self, item):
            return True

    with pytest.raises(TextDataError, match="too small for these sizes"):
        babi._generate_split(babi.BabiConfig("qa1"), 3, babi.random.Random(0), Everything(), "valid")


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "qa6"}, "qa6"), ({"task": "qa4", "max_facts": 5}, "exactly 2 facts"),
    ({"min_facts": 5, "max_facts": 3}, "min_facts <= max_facts"), ({"n_valid": -1}, ">= 0"),
    ({"task": "qa5", "min_facts": 2, "max_facts": 3}, "qa5 needs max_facts >= 4"),
])
def test_babi_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        babi.BabiConfig(**kwargs)


BABILONG = {  # BABILong's columns and habits: facts joined by spaces, a trailing space after the question
    "train": {"input": ["Mary moved to the bathroom. John went to the hallway.",
                        "Daniel went back to the garden. Sandra journeyed to the office. Daniel moved to the kitchen.",
                        "John travelled to the office.", "Mary went to the garden. Mary journeyed to the office.",
                        "Sandra went to the hallway.", "John moved to the bedroom."] * 4,
              "question": ["Where is Mary? ", "Where is Daniel? ", "Where is John? ", "Where is Mary? ",
                           "Where is Sandra? ", "Where is John? "] * 4,
              "target": ["bathroom", "kitchen", "office", "office", "hallway", "bedroom"] * 4},
    "test": {"input": ["Sandra moved to the kitchen. Sandra went to the garden."], "question": ["Where is Sandra? "],
             "target": ["garden "]},
}


def test_babilong_loader_on_a_saved_folder(tmp_path):
    dd = babi.load_babi(save(tmp_path, "babilong_qa1_0k", BABILONG), task="qa1", n_carve=2)
    assert dd["test"][0] == {"context": "Sandra moved to the kitchen.\nSandra went to the garden.",
                             "query": "Question: Where is Sandra?\nAnswer:", "target": "garden",
                             "answers": ["garden"]}
    assert len(dd["valid"]) == 4 and len(dd["train"]) == 20  # two whole contexts (each 4 times) carved
    assert not set(dd["valid"]["context"]) & set(dd["train"]["context"])
    assert babi.load_babi(tmp_path / "babilong_qa1_0k", n_carve=2)["valid"]["context"] == dd["valid"]["context"]
    for s in dd["train"]:
        assert "\n".join(babi.split_facts(s["context"].replace("\n", " "))) == s["context"]


def test_babi_cli_generates_and_converts(tmp_path, capsys):
    assert babi.main(["--task", "qa3", "--n_train", "40", "--n_valid", "8", "--n_test", "8", "--out",
                      str(tmp_path)]) == 0
    path = tmp_path / "babi-qa3_40"
    card = json.loads((path / "dataset_card.json").read_text())
    assert card["config"]["task"] == "qa3" and card["splits"]["test"]["rows_whose_context_is_in_an_earlier_split"] == 0
    saved = babi.load_babi(path, task="qa3")
    expected = babi.generate_babi("qa3", 40, 8, 8)
    for split in expected:
        assert saved[split].to_dict() == expected[split].to_dict()
    assert babi.main(["--task", "qa3", "--n_train", "40", "--out", str(tmp_path)]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    src = save(tmp_path, "babilong_qa1_0k", BABILONG)
    assert babi.main(["--source", str(src), "--n_valid", "2", "--out", str(tmp_path / "conv")]) == 0
    assert as_dicts(babi.load_babi(tmp_path / "conv/babilong_qa1_0k")) == as_dicts(babi.load_babi(src, n_carve=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["babi-qa3_40", "babilong_qa1_0k", "conv"]  # no temp dirs


# ---------------------------------------------------------------------------------------------
# Phonebook
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_entries", [2, 9, 64])
def test_phonebook_samples(n_entries):
    dd = pb.generate_phonebook(n_entries, 60, 10, 10, seed=0)
    asked = Counter()
    for s in dd["train"]:
        book = dict(re.fullmatch(r"(\w+ \w+): (\d{3}-\d{4})", line).groups() for line in s["context"].split("\n"))
        assert len(book) == n_entries and len(set(book.values())) == n_entries
        name = re.fullmatch(r"Question: What is (\w+ \w+)'s phone number\?\nAnswer:", s["query"]).group(1)
        assert book[name] == s["target"] and s["answers"] == [s["target"]]
        asked[list(book).index(name)] += 1
    assert len(asked) == min(n_entries, len(asked)) and (n_entries == 2 or len(asked) > 2)  # any position


def test_phonebook_is_reproducible_and_disjoint():
    a, b, c = (pb.generate_phonebook(4, 300, 50, 50, seed=s) for s in (0, 0, 1))
    for split in a:
        assert a[split].to_dict() == b[split].to_dict()
    assert a["train"]["context"] != c["train"]["context"]
    train, valid = set(a["train"]["context"]), set(a["valid"]["context"])
    assert not train & valid and not (train | valid) & set(a["test"]["context"])


def test_phonebook_loader_and_config(tmp_path):
    rows = {"context": [f"P{i}: 55{i}-0000\nQ{i}: 66{i}-0000" for i in range(20)],
            "query": [f"P{i}?" for i in range(20)], "target": [f"55{i}-0000 " for i in range(20)]}
    dd = pb.load_phonebook(save(tmp_path, "phonebook_N2", {"train": rows, "validation": rows}), n_carve=3)
    assert list(dd) == ["train", "valid", "test"] and len(dd["test"]) == 2 and len(dd["train"]) == 18
    assert dd["valid"][0] == {"context": "P0: 550-0000\nQ0: 660-0000", "query": "P0?\nAnswer:",
                              "target": "550-0000", "answers": ["550-0000"]}
    with pytest.raises(ValueError, match="n_entries=65 is out of range"):
        pb.PhonebookConfig(n_entries=65)
    assert pb.main(["--n_entries", "3", "--n_train", "20", "--n_valid", "4", "--n_test", "4",
                    "--out", str(tmp_path)]) == 0
    assert pb.load_phonebook(tmp_path / "phonebook-N3_20")["test"].to_dict() == \
        pb.generate_phonebook(3, 20, 4, 4)["test"].to_dict()


# ---------------------------------------------------------------------------------------------
# Shared loader errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("load, hub_name, cli", [
    (lambda: babi.load_babi(task="qa2"), "yurakuratov/babilong_qa2_0k", "babi_utils.py --task qa2"),
    (lambda: pb.load_phonebook(n_entries=8), "booydar/phonebook_N8", "phonebook_utils.py"),
    (lambda: sq.load_squad(), "rajpurkar/squad", "squad_utils.py"),
])
def test_unreachable_hub_gives_one_clear_error(offline, load, hub_name, cli):
    with pytest.raises(TextDataError) as e:
        load()
    message = str(e.value)
    assert "could not load" in message and hub_name in message and cli in message
    assert "save_to_disk" in message and "HF_HUB_OFFLINE is set" in message


def test_no_connection_fails_at_once_without_retries(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    def refuse(address, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not try the hub"))
    with pytest.raises(TextDataError, match="no connection to huggingface.co: network is unreachable.*babi_utils"):
        babi.load_babi(task="qa1")


def test_missing_folder_and_columns_and_empty_fields(tmp_path, offline):
    with pytest.raises(TextDataError, match="does not exist.*babi_utils.py"):
        babi.load_babi(tmp_path / "nope")
    with pytest.raises(TextDataError, match=r"lacks columns \['question'\].*input.*target"):
        babi.load_babi(save(tmp_path, "a", {"train": {"input": ["A went to the b."], "target": ["b"]}}))
    with pytest.raises(TextDataError, match=r"split 'test', row 0 has an empty target"):
        babi.load_babi(save(tmp_path, "b", {"test": {k: v[:1] for k, v in BABILONG["test"].items()} | {"target": [" "]},
                                             "train": BABILONG["train"]}))
    with pytest.raises(TextDataError, match="row 1 has an empty context"):
        pb.load_phonebook(save(tmp_path, "c", {"train": {"context": ["x: 1", ""], "query": ["x?"] * 2,
                                                         "target": ["1"] * 2}}))
    with pytest.raises(TextDataError, match=r"splits \['qa1'\].*not understood"):
        babi.load_babi(save(tmp_path, "d", {"qa1": BABILONG["test"]}))
    with pytest.raises(TextDataError, match="empty gold answer"):
        pb.load_phonebook(save(tmp_path, "e", {"train": {"context": ["x: 1"], "query": ["x?"], "target": ["1"],
                                                         "answers": [["1", ""]]}}))


def test_carve_keeps_contexts_whole_and_is_seeded():
    ds = text_dataset({"context": [f"c{i % 7}" for i in range(70)], "query": ["q"] * 70, "target": ["t"] * 70})
    rest, carved = carve_split(ds, 15, seed=0)
    assert len(carved) == 20 and len(rest) == 50 and not set(rest["context"]) & set(carved["context"])
    assert carve_split(ds, 15, seed=0)[1]["context"] == carved["context"] != carve_split(ds, 15, seed=5)[1]["context"]


# ---------------------------------------------------------------------------------------------
# SQuAD: metric, loader, layouts, synthetic set
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, normalised", [
    ("The Denver Broncos", "denver broncos"), ("  a  Cat,   an apple! ", "cat apple"),
    ("U.S. Army", "us army"), ("well-known", "wellknown"), ("Theatre of the Anne", "theatre of anne"),
    ("the", ""), ("1,250 members.", "1250 members"), ("\"Hello\"\t(World)\n", "hello world"),
])
def test_squad_normalisation(text, normalised):
    assert tm.normalize_answer(text) == normalised


@pytest.mark.parametrize("prediction, answers, em, f1", [
    ("the Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
    ("Denver Broncos won", "Denver Broncos", 0.0, 0.8),  # P 2/3, R 1
    ("the cat sat", ["a dog", "cat on mat"], 0.0, 0.4),  # best gold: P 1/2, R 1/3
    ("go go", ["go go stop"], 0.0, 0.8),  # multiset overlap: two go; P 1, R 2/3
    ("Rinther Academy", ["x", "the Rinther Academy"], 1.0, 1.0),
    ("nothing alike", ["Rinther Academy"], 0.0, 0.0),
    ("the", ["an"], 1.0, 0.0),  # both normalise to "": EM 1, F1 0 as in the official v1.1 script
])
def test_squad_exact_match_and_f1(prediction, answers, em, f1):
    assert tm.exact_match(prediction, answers) == em
    assert tm.f1_score(prediction, answers) == pytest.approx(f1)


def test_squad_scores_per_sample_and_errors():
    assert sq.score_squad(["Denver", "x"], [["Denver Broncos", "Denver"], ["y"]]) == \
        {"exact_match": [1.0, 0.0], "f1": [1.0, 0.0]}
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        tm.squad_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no gold answers"):
        tm.exact_match("a", [])


PARAGRAPH = "Tesla was born in Smiljan. He moved to the United States in 1884."


def official_json(answers_per_question, unanswerable=False):
    qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": PARAGRAPH.find(a)} for a in ans]}
           for i, (q, ans) in enumerate(answers_per_question)]
    if unanswerable:
        qas.append({"id": "v2", "question": "Why?", "answers": [], "is_impossible": True})
    return {"version": "1.1", "data": [{"title": "Tesla", "paragraphs": [{"context": PARAGRAPH, "qas": qas}]}]}


def write_official(folder, n_train):
    folder.mkdir()
    train = {"version": "1.1", "data": [
        {"title": f"T{i}", "paragraphs": [{"context": f"Paragraph {i} about a town.", "qas": [
            {"id": f"t{i}-{j}", "question": f"Question {j}?", "answers": [{"text": "town", "answer_start": 20}]}
            for j in range(2)]}]} for i in range(n_train)]}
    (folder / "train-v1.1.json").write_text(json.dumps(train))
    dev = official_json([("Where was Tesla born?", ["Smiljan", "Smiljan", "in Smiljan"]),
                         ("When did Tesla move to the United States?", ["1884", "in 1884"])])
    (folder / "dev-v1.1.json").write_text(json.dumps(dev))
    return folder


def test_squad_loader_on_official_json(tmp_path):
    folder = write_official(tmp_path / "squad", n_train=30)
    dd = sq.load_squad(folder, n_carve=5)
    assert [len(dd[s]) for s in ("train", "valid", "test")] == [54, 6, 2]  # dev is test; 3 paragraphs carved
    assert dd["test"][0] == {"id": "q0", "title": "Tesla", "context": PARAGRAPH, "question": "Where was Tesla born?",
                             "answers": ["Smiljan", "Smiljan", "in Smiljan"]}  # every gold answer, in order
    assert not set(dd["valid"]["context"]) & set(dd["train"]["context"])
    assert sq.load_squad(folder / "dev-v1.1.json")["test"].to_dict() == dd["test"].to_dict()


def test_squad_layouts():
    ds = text_dataset({"id": ["q0"], "title": ["Tesla"], "context": [PARAGRAPH], "question": [" Where was Tesla born? "],
                       "answers": [["Smiljan", "in Smiljan"]]})
    expected = {
        "c_qa": (PARAGRAPH, "Question: Where was Tesla born?\nAnswer:"),
        "cq_a": (f"{PARAGRAPH}\nQuestion: Where was Tesla born?", "Answer:"),
        "qc_a": (f"Question: Where was Tesla born?\n{PARAGRAPH}", "Answer:"),
    }
    for layout, (context, query) in expected.items():
        row = sq.squad_layout(ds, layout)[0]
        assert row == {"id": "q0", "context": context, "query": query, "target": "Smiljan",
                       "answers": ["Smiljan", "in Smiljan"]}
    with pytest.raises(TextDataError, match="layout='ca_q' is not one of"):
        sq.squad_layout(ds, "ca_q")


def test_squad_loader_on_hub_rows_and_bad_json(tmp_path):
    hub_rows = {"id": [f"h{i}" for i in range(20)], "title": ["T"] * 20,
                "context": [f"Paragraph {i % 10}." for i in range(20)], "question": ["Which?"] * 20,
                "answers": [{"text": ["Paragraph", "Paragraph 1"], "answer_start": [0, 0]}] * 20}
    dd = sq.load_squad(save(tmp_path, "squad", {"train": hub_rows, "validation": hub_rows}), n_carve=2)
    assert len(dd["test"]) == 20 and len(dd["valid"]) == 2 and dd["test"][0]["answers"] == ["Paragraph", "Paragraph 1"]
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2/dev-v2.0.json").write_text(json.dumps(official_json([("Who?", ["Tesla"])], unanswerable=True)))
    with pytest.raises(TextDataError, match="question 'v2' has no answer.*SQuAD v1.1"):
        sq.load_squad(tmp_path / "v2")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(TextDataError, match="cannot tell the split"):
        sq.load_squad(tmp_path / "notes.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/train.json").write_text(json.dumps({"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}))
    with pytest.raises(TextDataError, match="lacks the SQuAD field 'context'"):
        sq.load_squad(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/dev.json").write_text(json.dumps(official_json([("Where?", [" "])])))
    with pytest.raises(TextDataError, match="empty gold answer"):
        sq.load_squad(tmp_path / "empty")


def test_synthetic_squad_spans_index_the_paragraph():
    objs = sq.synthetic_squad_json(60, 30, seed=2)
    contexts = {}
    for split, obj in objs.items():
        for article in obj["data"]:
            (paragraph,) = article["paragraphs"]
            context = paragraph["context"]
            assert 3 <= len(paragraph["qas"]) <= 5 and len({q["question"] for q in paragraph["qas"]}) == len(paragraph["qas"])
            for qa in paragraph["qas"]:
                assert qa["question"].endswith("?") and (len(qa["answers"]) == 1 or split == "dev")
                for ans in qa["answers"]:
                    assert context[ans["answer_start"]:ans["answer_start"] + len(ans["text"])] == ans["text"]
            contexts.setdefault(split, set()).add(context)
    assert not contexts["train"] & contexts["dev"]
    assert any(len(qa["answers"]) > 1 for a in objs["dev"]["data"] for qa in a["paragraphs"][0]["qas"])
    assert objs == sq.synthetic_squad_json(60, 30, seed=2) != sq.synthetic_squad_json(60, 30, seed=3)


def test_synthetic_squad_cli_writes_official_files_that_load(tmp_path):
    assert sq.main(["--n_train_paragraphs", "40", "--n_dev_paragraphs", "10", "--n_valid", "8",
                    "--out", str(tmp_path)]) == 0
    folder = tmp_path / "squad-synthetic_40p"
    assert sorted(p.name for p in folder.iterdir()) == ["dataset_card.json", "dev-v1.1.json", "train-v1.1.json"]
    loaded = sq.load_squad(folder, n_carve=8)
    generated = sq.generate_squad(40, 10, n_carve=8)
    for split in ("train", "valid", "test"):
        assert loaded[split].to_dict() == generated[split].to_dict()
    gold = sq.squad_layout(loaded["test"], "cq_a")
    assert all(s["query"] == "Answer:" and s["target"] in s["context"] for s in gold)
    assert sq.score_squad(gold["target"], gold["answers"])["f1"] == [1.0] * len(gold)
    assert sq.main(["--source", str(folder), "--out", str(tmp_path / "conv")]) == 0
    converted = sq.load_squad(tmp_path / "conv" / folder.name)
    assert converted["test"].to_dict() == sq.load_squad(folder)["test"].to_dict()
