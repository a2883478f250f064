"""Every Python block of README.md runs as written, from a directory outside the repository.

Names a block uses without defining (its placeholders, like `student_features`) get small
inputs from `PLACEHOLDERS`; a new placeholder must be added there, so no block can rot.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT

# Small inputs for the README's placeholders: Python source, evaluated before the block.
PLACEHOLDERS = {
    "student_features": "jax.random.normal(jax.random.key(1), (4, 8, 8, 16))",
    "student_kernel": "jax.random.normal(jax.random.key(2), (16, 10))",
    "teacher_features": "jax.random.normal(jax.random.key(3), (4, 4, 4, 32))",
    "teacher_kernel": "jax.random.normal(jax.random.key(4), (32, 10))",
}
# What each block must leave behind, by a name it defines: Python source that must be true.
CHECKS = {
    "grads": "grads.shape == student_features.shape and bool(jnp.isfinite(loss)) and loss.shape == ()",
    "kernel": "logits.shape == (images.shape[0], 100) and features.shape[-1] == kernel.shape[0]",
    "state, metrics": "int(state.step) == 1 and metrics['count'] == 8 and bool(jnp.isfinite(metrics['loss_cat']))",
}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)


def _undefined_names(block: str) -> set[str]:
    tree = ast.parse(block)
    stored, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (stored if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
    return loaded - stored - set(dir(builtins))


def test_every_python_block_of_the_readme_runs_outside_the_repository(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 2, "README.md's Python blocks were not found"
    program = ["import jax, jax.numpy as jnp"]
    for index, block in enumerate(blocks):
        missing = _undefined_names(block)
        unknown = missing - PLACEHOLDERS.keys()
        assert not unknown, f"README block {index} uses {sorted(unknown)} without defining them; add them to PLACEHOLDERS"
        checks = [CHECKS[name] for name in CHECKS if re.search(rf"^{name}\b\s*=", block, re.M)]
        assert checks, f"README block {index} defines none of {sorted(CHECKS)}; say in CHECKS what it must give"
        # The block runs with its placeholders only: its own imports must do the rest.
        program.append(
            f"inputs = {{name: eval(source) for name, source in {({n: PLACEHOLDERS[n] for n in missing})!r}.items()}}\n"
            f"exec({block!r}, inputs)\n"
            + "".join(f"assert eval({check!r}, {{'jnp': jnp}}, inputs), {f'block {index}: {check}'!r}\n"
                      for check in checks))
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true")  # compiling is most of the cost
    completed = subprocess.run([sys.executable, "-c", "\n".join(program)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, textwrap.shorten(completed.stderr[-3000:], 3000)
