"""Let PyPI's torchvision import beside the CPU torch (see ../shared/docs/stack.md).

torchvision's wheel is a CUDA build whose compiled ops cannot load against torch's CPU build, yet its
``_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
unconditionally, so ``import torchvision`` raises "operator torchvision::nms does not exist".
This makes those two registrations conditional on ``torchvision.extension._has_ops()``: the
pure-Python transforms that Qwen2-VL's image processor needs work; the compiled ops (nms,
roi_align, decode_jpeg) stay unavailable, and nothing here uses them. Idempotent.
"""

import importlib.util
import pathlib
import sys

MARK = "# duet-rl: guarded"


def patch(path: pathlib.Path) -> bool:
    src = path.read_text()
    if MARK in src:
        return False
    header = f"def _duet_has_ops():  {MARK}\n    return torchvision.extension._has_ops()\n\n\n"
    out = []
    for line in src.splitlines(keepends=True):
        if line.startswith('@torch.library.register_fake("torchvision::nms")') or line.startswith(
            '@torch.library.register_fake("torchvision::qnms")'
        ):
            op = line.split('"')[1]
            if op == "torchvision::nms":
                out.append(header)
            line = f'@(torch.library.register_fake("{op}") if _duet_has_ops() else (lambda f: f))  {MARK}\n'
        out.append(line)
    path.write_text("".join(out))
    return True


def main() -> None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision not installed, nothing to do")
        return
    target = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    changed = patch(target)
    print(f"patch_torchvision: {'patched' if changed else 'already patched'} {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
