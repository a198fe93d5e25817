"""Package boundaries: the contracts load without pyzmq or the client, storage stands alone, ferric_ipc never needs ferricd."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What client and daemon share: each must import in a process that has no ZeroMQ and no Client.
CONTRACT_MODULES = [
    "ferric_ipc",
    "ferric_ipc.protocol",
    "ferric_ipc.index_layout",
    "ferric_ipc.file_layout",
    "ferric_ipc.keys",
    "ferric_ipc.routing",
    "ferric_ipc.errors",
    "ferric_ipc.stream_frames",
    "ferricd.storage",
    "ferricd.storage.records",
]

#: What ferricd.storage may import of ferricd: itself, and the clock seam.
STORAGE_MAY_IMPORT = {"ferricd.storage", "ferricd.clock"}


def loaded_modules_after_import(module):
    """The names in sys.modules of a fresh interpreter that imported only ``module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", CONTRACT_MODULES)
def test_contract_modules_load_neither_zmq_nor_the_client(module):
    loaded = loaded_modules_after_import(module)
    unwanted = sorted(name for name in loaded if name == "zmq" or name.startswith("zmq.") or name == "ferric_ipc.client")
    assert not unwanted, f"importing {module} loads {unwanted}"


def test_the_client_names_still_import_from_the_package():
    code = (
        "import ferric_ipc\n"
        "from ferric_ipc import Client, Lease, Lock, Pipeline, Transaction\n"
        "import ferric_ipc.client as c\n"
        "assert (Client, Lease, Lock, Pipeline, Transaction) == (c.Client, c.Lease, c.Lock, c.Pipeline, c.Transaction)\n"
        "assert all(hasattr(ferric_ipc, name) for name in ferric_ipc.__all__)\n"
        "assert set(ferric_ipc.__all__) <= set(dir(ferric_ipc))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_an_unknown_name_is_an_attribute_error():
    import ferric_ipc

    with pytest.raises(AttributeError, match="Clint"):
        ferric_ipc.Clint  # noqa: B018


def test_daemon_only_errors_are_not_public():
    import ferric_ipc

    assert "DirectoryLockedError" not in ferric_ipc.__all__
    assert "CorruptDataError" not in ferric_ipc.__all__


def imported_modules(path, package):
    """Every module ``path`` imports (at any depth of the file), relative imports resolved against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            # ``from ferricd import clock`` imports the module ferricd.clock.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_imports(directory, package):
    """``{file: modules it imports}`` for every .py file under ``directory``."""
    return {
        path.relative_to(ROOT): imported_modules(path, package)
        for path in sorted((ROOT / directory).rglob("*.py"))
    }


def test_storage_imports_nothing_of_ferricd_outside_storage():
    for path, modules in package_imports("ferricd/storage", "ferricd.storage").items():
        upward = {
            module for module in modules
            if module.split(".")[0] == "ferricd" and module != "ferricd"
            and not any(module == allowed or module.startswith(allowed + ".") for allowed in STORAGE_MAY_IMPORT)
        }
        assert not upward, f"{path} imports {sorted(upward)}"


def test_ferric_ipc_never_imports_ferricd():
    for path, modules in package_imports("ferric_ipc", "ferric_ipc").items():
        daemon = {module for module in modules if module.split(".")[0] == "ferricd"}
        assert not daemon, f"{path} imports {sorted(daemon)}"


def test_the_import_checks_see_imports_inside_functions(tmp_path):
    # The two tests above rely on this: a lazy import in a function body counts.
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ferricd import shard\n    from . import sibling\n")
    modules = imported_modules(sample, "ferricd.storage")
    assert {"ferricd.shard", "ferricd.storage.sibling"} <= modules
