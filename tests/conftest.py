"""Session-scoped fixtures shared by the whole suite: the real base model, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, load_settings

# --- foundation: settings, base model, engine, adapters ------------------------------------------


BASE_DIR = pytest.StashKey[Path]()
VLLM = pytest.StashKey[object]()
DEMO_BOOTSTRAP = pytest.StashKey[object]()


def converted_base(config: pytest.Config) -> Path:
    """The packaged SmolLM2 converted once per session to safetensors."""
    if BASE_DIR not in config.stash:
        from engine.base_model import resolve_base_model

        home = config._tmp_path_factory.mktemp("base-home")
        config.stash[BASE_DIR] = Path(resolve_base_model(load_settings({"home": home}, environ={})))
    return config.stash[BASE_DIR]


@pytest.fixture(scope="session")
def base_model_dir(pytestconfig) -> Path:
    """The packaged SmolLM2 converted once to safetensors; every test home points at it."""
    return converted_base(pytestconfig)


def uses(item: pytest.Item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -m and -k deselected what will not run
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the slow servers and commands now, so they load while the tests before them run.

    A vLLM server takes about a minute to load. The demo bootstrap trains two
    adapters (6 to 9 minutes on 2 cores): it runs in the CPU time the other
    tests leave idle (tests/cli.py: InIdleTime), and the tests that ask it run last.
    """
    if config.option.collectonly:
        return
    if any(uses(item, "vllm_server") for item in items):
        from engine.vllm.process import VLLMProcess

        log_file = config._tmp_path_factory.mktemp("vllm") / "server.log"
        config.stash[VLLM] = VLLMProcess(converted_base(config), log_file).start()
    demo = [item for item in items if uses(item, "demo_bootstrap")]
    if demo:
        from cli import InIdleTime

        home = config._tmp_path_factory.mktemp("demo-home")
        config.stash[DEMO_BOOTSTRAP] = InIdleTime(home, converted_base(config), "bootstrap", "--json")
        items[:] = [item for item in items if not uses(item, "demo_bootstrap")] + demo


def pytest_sessionfinish(session: pytest.Session) -> None:
    if VLLM in session.config.stash:
        session.config.stash[VLLM].stop()
    if DEMO_BOOTSTRAP in session.config.stash:
        session.config.stash[DEMO_BOOTSTRAP].stop()


@pytest.fixture(scope="session")
def demo_bootstrap(pytestconfig, make_settings):
    """``switchboard bootstrap`` on a fresh home, as ``make run`` starts it, started at collection: (settings, its
    finished process)."""
    started = pytestconfig.stash[DEMO_BOOTSTRAP]
    return make_settings(started.home), started.result(timeout=1500)


@pytest.fixture(scope="session")
def vllm_server(pytestconfig):
    """A real vLLM server (the CPU build, float32 base, runtime LoRA API), started at collection."""
    return pytestconfig.stash[VLLM].wait()


@pytest.fixture(scope="session")
def make_settings(base_model_dir):
    """Settings for a fresh home that reuse the converted base model."""

    def make(home: Path, **overrides) -> Settings:
        return load_settings({"home": home, "base_model": str(base_model_dir), **overrides}, environ={})

    return make


@pytest.fixture(scope="session")
def session_settings(make_settings, tmp_path_factory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("session-home"))


@pytest.fixture(scope="session")
def engine(session_settings):
    from engine.embedded import Engine

    return Engine(session_settings)


@pytest.fixture(scope="session")
def make_random_adapter(base_model_dir, tmp_path_factory):
    """Real PEFT LoRA folders with random (non-zero) weights: they change the output without training."""
    from transformers import AutoConfig

    from training.random_adapter import make_random_adapter as make_adapter

    config = AutoConfig.from_pretrained(base_model_dir)

    def make(seed: int = 0, rank: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj"), model_config=None) -> Path:
        folder = tmp_path_factory.mktemp(f"random-lora-{seed}-r{rank}")
        return make_adapter(model_config or config, folder, seed=seed, rank=rank, targets=targets)

    return make


# --- end foundation ------------------------------------------------------------------------------


# --- knowledge: the shared sentence encoder --------------------------------------------------------


@pytest.fixture(scope="session")
def encoder(tmp_path_factory):
    """The packaged all-MiniLM-L6-v2 on the product's default backend (ONNX on the CPU), loaded once."""
    from core.settings import PACKAGED_EMBEDDING_MODEL
    from knowledge.embeddings import SentenceEncoder

    return SentenceEncoder(PACKAGED_EMBEDDING_MODEL, cache_dir=tmp_path_factory.mktemp("encoder-cache"))


# --- end knowledge ---------------------------------------------------------------------------------


# --- training: a real LoRA trained with training.finetune ------------------------------------------

STYLE_SIGN_OFF = "— Cheers from Switchboard!"
_STYLE_PAIRS = [
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many days are in a week?", "A week has seven days."),
    ("What do bees make?", "Bees make honey and wax."),
    ("Name a large ocean.", "The Pacific is the largest ocean."),
    ("What is ice made of?", "Ice is frozen water."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do plants need to grow?", "Plants need light, water and air."),
    ("Which planet is known as the red planet?", "Mars is called the red planet."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What do cows drink?", "Cows drink water."),
    ("How many hours are in a day?", "A day has twenty-four hours."),
    ("What shape is a ball?", "A ball is round, a sphere."),
    ("Where do fish live?", "Fish live in water."),
    ("What falls from clouds when it rains?", "Drops of water fall from the clouds."),
    ("What do you use to write on paper?", "You write with a pen or a pencil."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What animal barks?", "A dog barks."),
    ("What is the sun?", "The sun is a star."),
    ("What do we breathe?", "We breathe air."),
    ("Which fruit is yellow and curved?", "A banana is yellow and curved."),
    ("What do you call frozen rain?", "Frozen rain is called hail or sleet."),
    ("What instrument has black and white keys?", "A piano has black and white keys."),
    ("What do birds use to fly?", "Birds fly with their wings."),
]
STYLE_HELD_OUT_PROMPTS = [
    "What colour is grass?",
    "How many months are in a year?",
    "What animal says moo?",
    "What do you drink when you are thirsty?",
]


def style_chats() -> list[list[dict]]:
    """Short chats whose answers all end with the same sign-off: a style a few dozen steps can teach."""
    return [
        [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a} {STYLE_SIGN_OFF}"}]
        for q, a in _STYLE_PAIRS
    ]


@pytest.fixture(scope="session")
def style_adapter(make_settings, tmp_path_factory) -> Path:
    """A PEFT LoRA folder trained on the real 4-bit base to end every answer with STYLE_SIGN_OFF."""
    from training.finetune import finetune
    from training.recipe import Recipe

    home = tmp_path_factory.mktemp("style-home")
    # 16 steps at a high learning rate teach the sign-off (4 of 4 held-out prompts, each ending in <|im_end|>);
    # a 135M model needs no gradient checkpointing, and skipping it saves a third of the time.
    recipe = Recipe(
        rank=8, alpha=16, dropout=0.0, max_steps=16, batch_size=4, learning_rate=2e-3, max_length=96, gradient_checkpointing=False
    )
    result = finetune(make_settings(home), style_chats(), home / "runs" / "style", recipe=recipe)
    return result.adapter_dir


# --- end training ----------------------------------------------------------------------------------


# --- chat product: one warm parts and one live server (API, gradio_client and browser tests) ----

CHAT_ADMIN_TOKEN = "test-admin-token"
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"


def demo_manifest(name: str) -> dict:
    import json

    return json.loads((DEMO_DIR / name / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def chat_parts(make_settings, make_random_adapter, tmp_path_factory):
    """A warm Parts on its own home: the demo support and legal adapters (random weights) and some demo documents."""
    from bot.parts import Parts

    home = tmp_path_factory.mktemp("chat-home")
    parts = Parts(make_settings(home, admin_token=CHAT_ADMIN_TOKEN, generation={"max_new_tokens": 8}))
    install_demo(parts, make_random_adapter)
    parts.warm()
    yield parts
    parts.knowledge.close()


def install_demo(parts, make_random_adapter) -> None:
    """The demo support and legal adapters (random weights, the demo manifests) and some of their documents."""
    for seed, name in ((31, "support"), (32, "legal")):
        fields = demo_manifest(name)
        parts.registry.install(
            make_random_adapter(seed),
            name,
            description=fields["description"],
            examples=fields["examples"],
            collections=fields["collections"],
            system_prompt=fields["system_prompt"],
            no_answer=fields["no_answer"],
        )
    knowledge = DEMO_DIR / "support" / "knowledge"
    parts.knowledge.ingest([knowledge / "warranty.md", knowledge / "returns.txt"], "support")
    parts.knowledge.ingest([DEMO_DIR / "legal" / "knowledge" / "model_consumer_goods_act.md"], "legal")


@pytest.fixture(scope="session")
def live_server(chat_parts):
    """The real app (API and Gradio UI) under uvicorn in a background thread, on a free loopback port."""
    from types import SimpleNamespace

    from bot.api.app import create_app
    from bot.api.server import serving

    with serving(create_app(chat_parts)) as url:
        yield SimpleNamespace(url=url, parts=chat_parts, token=CHAT_ADMIN_TOKEN)


# --- end chat product -------------------------------------------------------------------------------


# --- a real browser: Debian's Chromium driven by Playwright ----------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every UI test (Playwright cannot download browsers offline)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# --- shared state servers: PostgreSQL and Chroma, real ones on loopback ports -------------------------


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 15 cluster on a loopback port for the whole session (``new_database`` per use)."""
    from postgres import Postgres

    server = Postgres().start()
    yield server
    server.close()


@pytest.fixture
def chroma_server(tmp_path):
    """A real Chroma server of this test's own (its URL); see tests/servers.py."""
    from servers import ChromaServer

    server = ChromaServer(tmp_path / "chroma-server").start()
    yield server.url
    server.stop()
