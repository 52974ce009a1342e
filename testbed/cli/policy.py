"""``megbed train`` and ``megbed evaluate``: the MEG policy from measured costs.

``megbed train --dataset RUN_DIR --algo cvpo --limit latency_s=3 --limit energy_j=400 --steps 50000 --seed 0
--out DIR`` trains on a campaign dataset (or ``--env module:Class`` on any gymnasium environment reporting
``info["cost"]``) with a progress bar, checkpoints (``--resume`` continues), a training log and an exported policy.

``megbed evaluate POLICY... --env dataset|live`` runs trained policies (directories written by ``train``) and the
baselines (``oracle``, ``oracle:per_request``, ``fixed:max_quality``, ``fixed:min_cost``, ``fixed:best_fixed``,
``fixed:N=8,beta=0.5``) and writes ``outcomes.parquet`` (one row per request) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megbed.testbed.cli.main import CliError


def _kv(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise CliError(f"{what} must be NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in v:
        return [_value(x) for x in v.split(",") if x]
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_limits(items: list[str] | None) -> dict[str, float]:
    limits = {}
    for item in items or []:
        k, v = _kv(item, "--limit")
        try:
            limits[k] = float(v)
        except ValueError as exc:
            raise CliError(f"--limit {item}: {v!r} is not a number") from exc
    return limits


def _load_mapping(path: str | None) -> dict | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise CliError(f"channel config {p} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        from megbed.megwire.safe_yaml import YamlError, load_yaml_text

        try:
            return load_yaml_text(text, str(p))
        except YamlError as exc:
            raise CliError(str(exc)) from None
    if p.suffix == ".toml":
        try:
            import tomllib  # novermin (tomli below on 3.10)
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib

        return tomllib.loads(text)
    return json.loads(text)


def _env_options(parser) -> None:
    g = parser.add_argument_group("MEG environment (campaign dataset)")
    g.add_argument("--dataset", metavar="RUN_DIR", help="campaign run directory (dataset/part-*.parquet)")
    g.add_argument("--channel", choices=("process", "dataset"), default=None,
                   help="channel states: the emulator's time-correlated process (default) or i.i.d. draws of the "
                        "campaign's measured states")
    g.add_argument("--channel-config", metavar="FILE", help="link config for the channel process (JSON/YAML/TOML)")
    g.add_argument("--episode-length", type=int, default=None, help="requests per episode (default 64)")
    g.add_argument("--reward", choices=("neg_log_mse", "psnr_db", "ms_ssim"), default=None)
    g.add_argument("--scheme", default=None, help="scheme rows to learn from (default meg)")
    g.add_argument("--energy-scope", choices=("total", "es", "ue"), default=None)
    g.add_argument("--fixed", action="append", metavar="COL=VALUE",
                   help="keep only rows with this configuration (repeatable)")
    g.add_argument("--n-mapping", choices=("uniform", "paper"), default=None)


def _meg_spec(args, base: dict | None = None) -> dict:
    from megbed.testbed.policy.api import meg_env_spec

    base = dict(base or {})
    dataset = args.dataset or base.get("dataset")
    if not dataset:
        raise CliError("--dataset RUN_DIR is needed (or --env module:Class for training)")
    fixed = dict(base.get("fixed") or {})
    for item in args.fixed or []:
        k, v = _kv(item, "--fixed")
        fixed[k] = _value(v)
    channel_config = _load_mapping(args.channel_config) if args.channel_config else base.get("channel_config")
    return meg_env_spec(
        dataset, channel=args.channel or base.get("channel", "process"), channel_config=channel_config,
        scheme=args.scheme or base.get("scheme", "meg"),
        energy_scope=args.energy_scope or base.get("energy_scope", "total"), fixed=fixed,
        extra_action_columns=tuple(base.get("extra_action_columns", ())), airtime=base.get("airtime", "auto"),
        episode_length=args.episode_length or base.get("episode_length", 64),
        reward=args.reward or base.get("reward", "neg_log_mse"), costs=tuple(base["costs"]) if base.get("costs") else None,
        n_mapping=args.n_mapping or base.get("n_mapping", "uniform"), n_choices=base.get("n_choices", "all"),
        obs_extras=tuple(base.get("obs_extras", ())))


def cmd_train(args) -> int:
    from megbed.testbed.policy.api import gym_env_spec, train_policy
    from megbed.testbed.policy.checkpoint import CheckpointError
    from megbed.testbed.policy.data import PolicyDatasetError

    limits = parse_limits(args.limit)
    if not limits:
        raise CliError("give at least one --limit, e.g. --limit latency_s=3")
    if args.env and args.dataset:
        raise CliError("--dataset and --env are exclusive")
    if args.env:
        spec = gym_env_spec(args.env, _env_kwargs(args), args.episode_length)
    else:
        spec = _meg_spec(args)
        if not any(k == "decoder" for k in spec["fixed"]):
            picked = _campaign_decoder(spec["dataset"])
            if picked:
                spec["fixed"].update(picked)
                print(f"the campaign compared UE decoders; training on decoder={picked['decoder']}, the one its "
                      "policy step uses (pass --fixed decoder=VALUE for another)")
    overrides = {}
    for item in args.set or []:
        k, v = _kv(item, "--set")
        overrides[k] = _value(v)
    try:
        result = train_policy(args.algo, spec, limits, args.out, steps=args.steps, seed=args.seed,
                              overrides=overrides, preset=args.preset, resume=args.resume,
                              progress=not args.no_progress,
                              eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                              checkpoint_every=args.checkpoint_every, max_wall_s=args.max_wall_s,
                              final_eval_episodes=args.final_eval_episodes)
    except (PolicyDatasetError, CheckpointError) as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    ev = result.final_eval
    print(f"trained {args.algo}: {result.env_steps} steps, {result.iterations} iterations, {result.wall_s:.0f} s")
    from megbed.testbed.policy.evaluate import cmdp_summary_lines

    for line in cmdp_summary_lines(f"final evaluation of {args.algo}", ev, result.constraints,
                                   ev.get("oracle_reward_mean")):
        print(line)
    print(f"  policy: {Path(args.out) / 'policy'}   log: {Path(args.out) / 'train_log.csv'}")
    return 0


def _env_kwargs(args) -> dict:
    if not args.env_kwargs:
        return {}
    try:
        kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as exc:
        raise CliError(f"--env-kwargs is not JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise CliError("--env-kwargs must be a JSON object")
    return kwargs


def _campaign_decoder(run_dir: str) -> dict | None:
    from megbed.testbed.policy.data import PolicyDatasetError
    from megbed.testbed.policy.quick import fixed_decoder

    try:
        return fixed_decoder(Path(run_dir))
    except (PolicyDatasetError, OSError, KeyError, ValueError):
        return None  # the dataset's own checks report what is wrong with it


def cmd_evaluate(args) -> int:
    import pandas as pd

    from megbed.testbed.policy.api import build_env, cost_names_of, episode_length_of, resolve_policy
    from megbed.testbed.policy.checkpoint import CheckpointError, LearnedPolicy
    from megbed.testbed.policy.data import PolicyDatasetError
    from megbed.testbed.policy.evaluate import run_episodes, summarise
    from megbed.testbed.policy.limits import Constraints

    # The first trained policy (if any) supplies the environment spec and the limits unless given here.
    trained = None
    for name in args.policies:
        if Path(name).exists():
            try:
                trained = LearnedPolicy.load(name)
            except CheckpointError as exc:
                raise CliError(str(exc)) from exc
            break
    base = trained.meta["env"] if trained else {}
    limits = parse_limits(args.limit) or (trained.meta["constraints"]["limits"] if trained else {})
    # The episode length: --episode-length, else the policy's (its training constraints), else the environment's.
    trained_t = trained.meta.get("constraints", {}).get("episode_length") if trained else None
    try:
        if args.env == "dataset":
            if base.get("type") == "gym":
                spec = dict(base)
            else:
                spec = _meg_spec(args, base)
            env = build_env(spec, seed=args.seed)
        elif args.env == "live":
            env = _live_env(args, base, trained)
        else:
            from megbed.testbed.policy.api import gym_env_spec

            kwargs = _env_kwargs(args) if args.env_kwargs else (
                base.get("kwargs", {}) if base.get("entry") == args.env else {})
            spec = gym_env_spec(args.env, kwargs, args.episode_length or trained_t)
            env = build_env(spec, seed=args.seed)
        episode_length = int(args.episode_length or trained_t or episode_length_of(env, None))
        env = _limit_episodes(env, episode_length)
        constraints = Constraints.from_mapping(cost_names_of(env), limits, episode_length) if limits else None
        frames, summary = [], {}
        for name in args.policies:
            if name.startswith("oracle") and args.env == "live":
                policy = _live_oracle(args, base, env, constraints, name)
            else:
                policy = resolve_policy(name, env, constraints)
            records = run_episodes(env, policy, args.episodes, seed=args.seed)
            key = name if not Path(name).exists() else f"{policy.name}:{Path(name).name}"
            records["policy"] = key
            frames.append(records)
            summary[key] = summarise(records, constraints)
        oracle_reward = _oracle_reward(summary, env, constraints)
    except (PolicyDatasetError, CheckpointError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        bed = getattr(args, "_live_testbed", None)
        if bed is not None and hasattr(bed, "close"):
            bed.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_parquet(out / "outcomes.parquet", index=False)
    meta = {"env": args.env, "episodes": args.episodes, "seed": args.seed, "episode_length": int(episode_length),
            "constraints": constraints.to_json() if constraints else None, "oracle_reward_mean": oracle_reward,
            "policies": summary}
    (out / "summary.json").write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    from megbed.testbed.policy.evaluate import cmdp_summary_lines

    for key, s in summary.items():
        for line in cmdp_summary_lines(key, s, constraints, None if key.startswith("oracle") else oracle_reward):
            print(line)
    _print_table(summary, constraints)
    print(f"outcomes: {out / 'outcomes.parquet'}   summary: {out / 'summary.json'}")
    return 0


class _EpisodeLimit:
    """Truncate episodes at T steps (where the environment does not end them itself)."""

    def __init__(self, env, episode_length: int) -> None:
        self.env, self.episode_length, self._t = env, int(episode_length), 0

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, **kwargs):
        self._t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        return obs, reward, terminated, truncated or self._t >= self.episode_length, info


def _limit_episodes(env, episode_length: int):
    own = getattr(env.unwrapped, "episode_length", None)
    return env if own is not None and int(own) == episode_length else _EpisodeLimit(env, episode_length)


def _oracle_reward(summary: dict, env, constraints) -> float | None:
    """The oracle's mean reward: the evaluated ``oracle`` policy, else a closed-form optimum the environment offers
    (``optimal_reward(limits)``, e.g. :mod:`megbed.testbed.policy.reference_cmdps`)."""
    if "oracle" in summary:
        return float(summary["oracle"]["reward_mean"])
    fn = getattr(env.unwrapped, "optimal_reward", None)
    if constraints is not None and callable(fn):
        return float(fn(constraints.as_dict))
    return None


def _live_env(args, base: dict, trained):
    from megbed.testbed.policy.env import RequestSpace, channel_process
    from megbed.testbed.policy.live import LiveEnv, load_testbed

    if not args.testbed and not args.campaign:
        raise CliError("--env live needs a campaign spec (--campaign SPEC.yaml: its local nodes are started as "
                       "`make run` starts them, or its nodes: section is used) or a binding (--testbed module:factory)")
    if "space" in base:
        space = RequestSpace.from_json(base["space"])
    elif args.dataset or base.get("dataset"):
        from megbed.testbed.policy.api import build_env

        space = build_env(_meg_spec(args, base), seed=args.seed).unwrapped.space
    else:
        raise CliError("--env live needs a trained policy or --dataset to know the action / observation conventions")
    testbed = _campaign_testbed(args) if args.campaign else load_testbed(args.testbed, args.testbed_kwargs)
    args._live_testbed = testbed
    channel_config = _load_mapping(args.channel_config) if args.channel_config else base.get("channel_config")
    costs = tuple(base.get("costs") or ()) or ("latency_s", "energy_j")
    return LiveEnv(testbed, channel_process(channel_config, args.seed), space,
                   episode_length=args.episode_length or base.get("episode_length", 64),
                   reward=args.reward or base.get("reward", "neg_log_mse"), costs=costs)


def _campaign_testbed(args):
    """The live testbed of a campaign spec: local nodes started like `make run`'s, or the spec's remote nodes; the
    requests' rows go into ``--out`` as a dataset like any campaign's (``megbed report OUT`` shows them)."""
    from megbed.testbed.campaign.live import OrchestratorTestbed
    from megbed.testbed.campaign.spec import SpecError, load_spec

    try:
        spec = load_spec(args.campaign)
    except (SpecError, OSError) as exc:
        raise CliError(f"--campaign {args.campaign}: {exc}") from exc
    kwargs: dict = {"engine": args.engine}
    if not spec.nodes.local:
        kwargs.update(es=spec.nodes.es, ue=list(spec.nodes.ue), channel_pub=spec.nodes.channel_pub)
    try:
        return OrchestratorTestbed(str(args.out), spec=str(args.campaign), **kwargs)
    except Exception as exc:  # noqa: BLE001 - node start-up / connection failures of any kind
        raise CliError(f"cannot start or reach the campaign's nodes: {type(exc).__name__}: {exc}") from exc


def _live_oracle(args, base, live_env, constraints, name):
    """The oracle on the live testbed acts on the dataset's cost model, so it needs the dataset."""
    from megbed.testbed.policy.api import build_env, resolve_policy

    sim = build_env(_meg_spec(args, base), seed=args.seed)
    oracle = resolve_policy(name, sim, constraints)
    oracle.env = live_env  # encode actions with the live environment's conventions (the same RequestSpace)
    return oracle


def _print_table(summary: dict, constraints) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="policy evaluation (means per request)")
    table.add_column("policy")
    table.add_column("reward", justify="right")
    names = list(constraints.constrained) if constraints else []
    for n in names:
        table.add_column(f"{n} / limit", justify="right")
    table.add_column("violation", justify="right")
    table.add_column("episodes over", justify="right")
    table.add_column("requests over", justify="right")
    for key, s in summary.items():
        row = [key, f"{s['reward_mean']:.4g}"] + [f"{s[f'cost_ratio_{n}']:.3f}" for n in names]
        row += [f"{s.get('violation', 0.0):.1%}", f"{s.get('episode_violation_rate', float('nan')):.0%}",
                f"{s.get('request_violation_rate', float('nan')):.0%}"]
        table.add_row(*row)
    Console().print(table)


def register(sub) -> None:
    p = sub.add_parser("train", help="train the MEG policy (CVPO / PPO-Lagrangian) from measured costs")
    p.add_argument("--algo", choices=("cvpo", "ppo-lag"), default="cvpo")
    p.add_argument("--env", metavar="MODULE:CLASS", help="train on any gymnasium env reporting info['cost'] instead")
    p.add_argument("--env-kwargs", metavar="JSON", help="keyword arguments for --env")
    p.add_argument("--limit", action="append", metavar="COST=VALUE", help="per-request limit, e.g. latency_s=3")
    p.add_argument("--steps", type=int, default=50_000, help="environment steps (requests) to train for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoint/, policy/, train_log.*)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="algorithm setting, e.g. gamma=0.9")
    p.add_argument("--preset", choices=("auto", "paper"), default="auto",
                   help="auto: the paper's settings with megbed's MEG adjustments (CVPO gamma 0.5, see "
                        "megbed.testbed.policy.api.MEG_OVERRIDES); paper: exactly the paper's / FSRL's")
    p.add_argument("--eval-every", type=int, default=1, help="deterministic evaluation every N iterations")
    p.add_argument("--eval-episodes", type=int, default=4, help="episodes of each evaluation during training")
    p.add_argument("--final-eval-episodes", type=int, default=50, help="episodes of the final evaluation")
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    p.add_argument("--max-wall-s", type=float, default=None, help="stop after this much training time (s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _env_options(p)
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate trained policies and baselines (dataset model or live testbed)")
    e.add_argument("policies", nargs="+", metavar="POLICY",
                   help="trained policy dir, oracle, oracle:per_request, fixed:max_quality|min_cost|best_fixed|N=8,beta=0.5")
    e.add_argument("--env", default="dataset", metavar="dataset|live|MODULE:CLASS",
                   help="the campaign's dataset model (default), the live testbed, or any gymnasium environment "
                        "reporting info['cost'] (episode length from the policy unless --episode-length)")
    e.add_argument("--env-kwargs", metavar="JSON", help="keyword arguments for --env MODULE:CLASS")
    e.add_argument("--limit", action="append", metavar="COST=VALUE", help="per-request limits (default: the policy's)")
    e.add_argument("--episodes", type=int, default=50, help="evaluation episodes per policy (default 50)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, metavar="DIR", help="where outcomes.parquet and summary.json go")
    e.add_argument("--campaign", metavar="SPEC.yaml",
                   help="--env live: the campaign whose nodes run the requests (local nodes started as `make run` "
                        "starts them, or the spec's nodes: section); the outcomes are a dataset in --out")
    e.add_argument("--engine", choices=("ldm", "synthetic"), default="ldm", help=argparse.SUPPRESS)
    e.add_argument("--testbed", metavar="MODULE:FACTORY", help="live testbed binding (a LiveTestbed factory)")
    e.add_argument("--testbed-kwargs", metavar="JSON", help="keyword arguments for --testbed")
    _env_options(e)
    e.set_defaults(func=cmd_evaluate)
