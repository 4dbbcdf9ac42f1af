"""The star-graph data source: format, determinism, held-out test set, the verifier, the closed-form
first pit against the Monte Carlo one, the teacher-forced per-position accuracy, and every
objective through the real config (data=star_graph)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from eightfold.config import ConfigError
from eightfold.data.arithmetic import first_wrong_step
from eightfold.data.star_graph import (
    LABELS,
    StarGraph,
    generate_graphs,
    pool_examples,
    pool_size,
    star_graph_split,
)
from eightfold.evaluate import position_accuracy
from eightfold.models import char_tokenizer
from eightfold.objectives.step_values import first_pit, pit_analysis, prefix_values
from eightfold.rollouts import rollout_negatives
from eightfold.rundir import run_dir
from eightfold.runfiles import RESULT
from eightfold.train import run
from eightfold.validate import validate_config
from eightfold.verify import extract_answer, is_correct, join_steps, split_steps
from tests.helpers import compose_cfg

TASK = dict(degree=3, path_length=5, num_nodes=20)


def parse(prompt: str) -> tuple[list[tuple[str, str]], str, str]:
    """The edges, source and goal written in a prompt (``a,b|c,d/s,g=``)."""
    assert prompt.endswith("=")
    edges, query = prompt[:-1].split("/")
    source, goal = query.split(",")
    return [tuple(e.split(",")) for e in edges.split("|")], source, goal


def paths_from(edges, source) -> list[list[str]]:
    """Every maximal path out of ``source`` along the edges."""
    children = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    out, stack = [], [[source]]
    while stack:
        path = stack.pop()
        nxt = children.get(path[-1], [])
        out += [path] if not nxt else []
        stack += [path + [c] for c in nxt]
    return out


# -----------------------------------------------------------------------------
# the generator


@pytest.mark.parametrize("degree,path_length", [(2, 4), (3, 5), (1, 2), (5, 3)])
def test_prompt_parses_back_to_a_star_with_one_path_to_the_goal(degree, path_length):
    for g in generate_graphs(50, seed=1, degree=degree, path_length=path_length, num_nodes=26):
        edges, source, goal = parse(g.prompt)
        assert (edges, source, goal) == (list(g.edges), g.source, g.goal)
        nodes = {x for e in edges for x in e}
        assert len(edges) == degree * (path_length - 1) and len(nodes) == len(edges) + 1
        assert nodes <= set(LABELS[:26]) and all(len(x) == 1 for x in nodes)
        assert sum(a == source for a, _ in edges) == degree  # the source has degree d
        arms = paths_from(edges, source)
        assert len(arms) == degree and all(len(a) == path_length for a in arms)  # l-1 after s
        to_goal = [a for a in arms if goal in a]
        assert len(to_goal) == 1 and to_goal[0][-1] == goal  # one path, and it ends at the goal
        assert split_steps(g.solution()) == to_goal[0] == list(g.path)


def test_edges_are_shuffled_and_labels_stay_below_num_nodes():
    graphs = generate_graphs(200, seed=0, degree=2, path_length=4, num_nodes=9)
    assert all({x for e in g.edges for x in e} <= set("abcdefghi") for g in graphs)
    # the edge out of the source onto the goal arm is not always listed first
    firsts = {[e[0] for e in g.edges].index(g.source) for g in graphs}
    assert len(firsts) > 3


def test_same_seed_same_graphs_sizes_nested_other_seed_differs():
    a = generate_graphs(100, seed=3, **TASK)
    b = generate_graphs(300, seed=3, **TASK)
    assert [g.prompt for g in a] == [g.prompt for g in b[:100]]
    assert [g.prompt for g in generate_graphs(100, seed=4, **TASK)] != [g.prompt for g in a]


def test_train_disjoint_from_test_deduplicated_and_nested():
    small, test = star_graph_split(100, 0, 200, 12345, **TASK)
    big, test2 = star_graph_split(400, 0, 200, 12345, **TASK)
    assert [e.prompt for e in test] == [e.prompt for e in test2]  # one fixed test set
    assert [e.prompt for e in small] == [e.prompt for e in big[:100]]
    keys = [e.problem.key for e in big]
    assert len(set(keys)) == 400 and not set(keys) & {e.problem.key for e in test}
    # a graph is its edges, not their order: a reshuffled test graph is still excluded
    g = test[0].problem
    shuffled = StarGraph(tuple(reversed(g.edges)), g.source, g.goal, g.path)
    assert shuffled.prompt != g.prompt and shuffled.key == g.key
    # the pool of sample_prompts=pool: fresh graphs outside train and test, in any edge order
    seen = set(keys) | {e.problem.key for e in test}
    pool = pool_examples(50, 1_000_003, [*big, *test], **TASK)
    assert len(pool) == 50 and not {e.problem.key for e in pool} & seen


def test_every_graph_of_a_tiny_pool_once_then_a_clear_error():
    task = dict(degree=2, path_length=2, num_nodes=3)  # s -> x, s -> y: 3 * 2 = 6 graphs
    assert pool_size(**task) == 6
    assert len({g.key for g in generate_graphs(6, seed=0, **task)}) == 6
    with pytest.raises(ValueError, match="larger than the problem pool"):
        star_graph_split(4, 0, 3, 12345, **task)


@pytest.mark.parametrize(
    "task,message",
    [
        (dict(degree=2, path_length=4, num_nodes=27), r"num_nodes=27 is not valid: .*at most 26"),
        (dict(degree=3, path_length=5, num_nodes=12), r"num_nodes=12 is too small: .* 13 distinct"),
        (dict(degree=2, path_length=1, num_nodes=20), r"path_length=1 is not valid"),
        (dict(degree=0, path_length=4, num_nodes=20), r"degree=0 is not valid"),
        (dict(degree=2, path_length=3, num_nodes=20, cue=1.5), r"cue=1.5 is not valid: .*\[0, 1\]"),
    ],
)
def test_bad_task_is_one_clear_line_from_the_generator_and_the_config(task, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        star_graph_split(10, 0, 10, 12345, **task)
    cfg = compose_cfg(
        [
            "data=star_graph",
            f"paths.root={tmp_path}",
            *[f"data.task.{k}={v}" for k, v in task.items()],
        ]
    )
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)


def test_config_refuses_a_star_graph_with_another_kind_or_task(tmp_path):
    base = ["data=star_graph", f"paths.root={tmp_path}"]
    with pytest.raises(ConfigError, match="data.kind='procedural' is not valid"):
        validate_config(compose_cfg([*base, "data.kind=procedural"]))
    with pytest.raises(
        ConfigError, match="expected the keys degree, path_length, num_nodes and optionally cue"
    ):
        validate_config(compose_cfg([*base, "+data.task.modulus=7"]))


def first_source_child(g: StarGraph) -> str:
    return next(b for a, b in g.edges if a == g.source)


def test_cue_lists_the_goal_arm_first_in_training_graphs_only():
    # the cue's rate is what was asked for in training, 1/d in the test graphs; the graphs are
    # the same graphs as without the cue (only the source edges' order differs), and no cue
    # leaves B&N's stream untouched
    task = dict(degree=2, path_length=3, num_nodes=20)
    train, test = star_graph_split(3000, 0, 1000, 12345, **task, cue=0.9)
    plain_train, plain_test = star_graph_split(3000, 0, 1000, 12345, **task)
    cued = [first_source_child(e.problem) == e.problem.path[1] for e in train]
    assert 0.87 < sum(cued) / len(cued) < 0.93
    assert (
        0.45 < sum(first_source_child(e.problem) == e.problem.path[1] for e in test) / 1000 < 0.55
    )
    assert [e.prompt for e in test] == [e.prompt for e in plain_test]
    assert [e.solution for e in train] != [e.solution for e in plain_train]  # other rng draws
    for e in train[:200]:
        g = e.problem
        assert len(set(g.edges)) == 4 and (g.source, g.path[1]) in g.edges
    always = star_graph_split(200, 0, 10, 12345, **task, cue=1.0)[0]
    assert all(first_source_child(e.problem) == e.problem.path[1] for e in always)
    never = star_graph_split(200, 0, 10, 12345, **task, cue=0.0)[0]
    assert not any(first_source_child(e.problem) == e.problem.path[1] for e in never)
    pool = pool_examples(500, 7, train + test, **task, cue=1.0)
    assert all(first_source_child(e.problem) == e.problem.path[1] for e in pool)


# -----------------------------------------------------------------------------
# the verifier and the closed-form first wrong step

G = StarGraph((("c", "k"), ("k", "p"), ("c", "l"), ("l", "g")), "c", "p", ("c", "k", "p"))


def test_verifier_accepts_only_the_path():
    assert G.prompt == "c,k|k,p|c,l|l,g/c,p=" and G.answer == "c,k,p"
    assert is_correct("c\nk\np", G.answer, "star_graph")
    assert is_correct(" c\nk\n\np\n", "c\nk\np", "star_graph")  # the step rule's whitespace
    for wrong in [
        "c\nl\ng",
        "c\nk",
        "c\nk\np\np",
        "k\np",
        "p\nk\nc",
        "c,k,p",
        "ck\np",
        "C\nK\nP",
        "",
    ]:
        assert not is_correct(wrong, G.answer, "star_graph"), wrong
    assert extract_answer("c\nk\np\n", "star_graph") == "c,k,p"
    assert extract_answer("c\n#p", "star_graph") is None


def test_first_wrong_step_is_the_first_node_off_the_path():
    assert first_wrong_step(G, G.solution()) is None  # through arithmetic's entry point
    assert G.first_wrong_step("c\nl\ng") == 1  # the wrong arm: the node after the source
    assert G.first_wrong_step("c\nk\ng") == 2  # right arm, wrong later
    assert G.first_wrong_step("k\np") == 0
    assert G.first_wrong_step("c\nk") == 2  # the missing goal, where it should be
    assert G.first_wrong_step("c\nk\np\nl") == 3  # past the goal


# -----------------------------------------------------------------------------
# a constructed policy: picks the first node after the source by a known rule, then follows the
# edges; a real model interface (forward with a KV-cache-like object), so the project's rollout
# engine and evaluation run on it unchanged


class _History:
    """The cache: each row's tokens so far (the rollout engine repeats and selects rows)."""

    def __init__(self, rows):
        self.rows = rows

    def batch_repeat_interleave(self, m):
        self.rows = [r for r in self.rows for _ in range(m)]

    def batch_select_indices(self, keep):
        self.rows = [self.rows[i] for i in keep.tolist()]


class CleverHans(torch.nn.Module):
    """Picks the right first node with probability ``1 - p_wrong`` (the rest spread over the
    source's other children) or, with ``p_wrong=None``, always the alphabetically first child;
    then emits the child of the previous node, and EOS at the goal or the end of an arm."""

    def __init__(self, tokenizer, p_wrong: float | None):
        super().__init__()
        self.tok, self.p_wrong = tokenizer, p_wrong
        self.config = type("Config", (), {"max_position_embeddings": 128})()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the callers

    def next_logprobs(self, ids: list[int]) -> torch.Tensor:
        out = torch.full((len(self.tok),), -1e9)
        text = self.tok.decode(ids, skip_special_tokens=True)
        if "=" not in text:
            out[self.tok.eos_token_id] = 0.0  # inside the prompt: anything, never scored
            return out
        prompt, done = text.split("=", 1)
        edges, source, goal = parse(prompt + "=")
        children = {}
        for a, b in edges:
            children.setdefault(a, []).append(b)
        nodes = split_steps(done)

        def put(weights: dict[str, float]) -> torch.Tensor:
            for c, w in weights.items():
                out[self.tok.convert_tokens_to_ids(c)] = torch.tensor(w).log()
            return out

        if not done:
            return put({source: 1.0})
        if not done.endswith("\n"):
            last = nodes[-1]
            return put({"<eos>": 1.0} if last == goal or last not in children else {"\n": 1.0})
        last = nodes[-1]
        if last == source:
            opts = sorted(children[source])
            if self.p_wrong is None:
                return put({opts[0]: 1.0})
            right = next(c for c in opts if goal in sum(paths_from(edges, c), []))
            wrong = [c for c in opts if c != right]
            return put({right: 1.0 - self.p_wrong, **{c: self.p_wrong / len(wrong) for c in wrong}})
        return put({children[last][0]: 1.0} if last in children else {"<eos>": 1.0})

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        use_cache=False,
        past_key_values=None,
    ):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if past_key_values is None:
            rows = [
                [t for t, m in zip(r.tolist(), k.tolist()) if m] for r, k in zip(input_ids, mask)
            ]
            cache = _History(rows)
            # every position of the input: the tokens of the row up to it (padding skipped)
            logits = torch.stack(
                [
                    torch.stack(
                        [
                            self.next_logprobs(
                                [t for t, m in zip(r[: j + 1].tolist(), k[: j + 1].tolist()) if m]
                            )
                            for j in range(input_ids.shape[1])
                        ]
                    )
                    for r, k in zip(input_ids, mask)
                ]
            )
        else:
            cache = past_key_values
            cache.rows = [r + [t] for r, t in zip(cache.rows, input_ids[:, -1].tolist())]
            logits = torch.stack([self.next_logprobs(r) for r in cache.rows]).unsqueeze(1)
        return type("Out", (), {"logits": logits, "past_key_values": cache})()


def test_monte_carlo_first_pit_equals_the_closed_form_on_a_clever_hans_policy():
    tok = char_tokenizer()
    policy = CleverHans(tok, p_wrong=0.5)
    _, test = star_graph_split(0, 0, 6, 12345, degree=2, path_length=4, num_nodes=20)
    negatives = []
    for i, e in enumerate(test):
        g = e.problem
        wrong_arm = next(p for p in paths_from(g.edges, g.source) if g.goal not in p)
        negatives.append((i, join_steps(wrong_arm)))  # the policy's own mistake: the wrong arm
        late = [*g.path[:2], next(x for x in LABELS if x not in g.path), g.goal]
        negatives.append((i, join_steps(late)))  # a later mistake this policy never makes
    items, _ = rollout_negatives(
        policy,
        tok,
        negatives,
        [e.prompt for e in test],
        [e.answer for e in test],
        "star_graph",
        rollouts=32,
        max_new_tokens=16,
        seed=0,
    )
    rows, stats = pit_analysis(items, test, "first_zero", 0.0, "mean", 5)
    for neg, values, pit, exact in rows:
        steps, path = neg.steps, test[neg.problem].problem.path
        assert exact == (1 if steps[1] != path[1] else 2)
        assert pit == exact == first_pit(prefix_values(neg, "mean"))
        # the values are the policy's: about 1/2 before the first node (a coin flip), 1 after
        # the right one, 0 from the first node off the path on
        assert all(0.25 <= v <= 0.75 for v in values[:2])
        assert values[2:] == ([1.0] if exact == 2 else []) + [0.0] * (len(values) - exact - 1)
    assert stats["first_pit_agreement"] == 1.0 and stats["first_pit_agreement_n"] == 12
    assert stats["exact_first_wrong_histogram"] == {"1": 6, "2": 6}


def test_position_accuracy_shows_the_clever_hans_signature():
    tok = char_tokenizer()
    _, test = star_graph_split(0, 0, 60, 12345, degree=2, path_length=4, num_nodes=20)
    policy = CleverHans(tok, p_wrong=None)  # the alphabetically first child of the source
    first_right = sum(
        min(c for a, c in e.problem.edges if a == e.problem.source) == e.problem.path[1]
        for e in test
    )
    acc = position_accuracy(policy, tok, test, batch_size=7)  # batches of unequal length too
    assert acc == [1.0, round(first_right / 60, 4), 1.0, 1.0]
    assert 0.2 < acc[1] < 0.8  # about 1/d
    right = CleverHans(tok, p_wrong=0.0)
    assert position_accuracy(right, tok, test) == [1.0] * 4


# -----------------------------------------------------------------------------
# every objective through the real config


def test_every_objective_runs_on_data_star_graph(tmp_path):
    torch.set_num_threads(1)
    base = [
        "experiment=star_graph",
        f"paths.root={tmp_path}",
        "trainer.enable_progress_bar=false",
        "data.size=48",
        "data.test_size=24",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "trainer.max_steps=40",
        "checkpoint_every_n_steps=100000",
    ]
    on_pi_sft = ["objective.k=4", "objective.steps=4"]
    rollouts = ["objective.rollouts=4", "objective.max_negatives=16"]
    for objective, extra in [
        ("sft", []),
        ("rft", on_pi_sft),
        ("dpo", on_pi_sft + ["objective.sample_prompts=pool"]),  # fresh graphs
        ("step_dpo", on_pi_sft + rollouts),
        ("awr", on_pi_sft + rollouts),
    ]:
        cfg = compose_cfg([*base, f"objective={objective}", *extra])
        validate_config(cfg)
        if objective == "sft":
            dm = instantiate(cfg.data, _convert_="all")
            dm.prepare_examples()
            assert dm.kind == "star_graph" and dm.train_examples[0].answer.count(",") == 3
        run(cfg)
        result = json.loads((run_dir(cfg) / RESULT).read_text())
        assert result["source"] == "star_graph" and len(result["test_position_accuracy"]) == 4
        assert all(0 <= a <= 1 for a in result["test_position_accuracy"])
        if objective == "dpo":
            assert result["sample_prompts"] == "pool" and result["samples"] == 4 * 48
        if objective == "step_dpo":  # the closed form reached the agreement check
            assert result["negatives_rolled_out"] > 0 and "exact_first_wrong_histogram" in result
