#!/usr/bin/env python3
"""Instruction counts of a kernel's loops, from its SASS: a static look at a CUDA kernel on a machine
without a GPU (how many instructions a loop iteration issues, and of which kinds).

cuobjdump is not part of the CUDA install on the build machine; PyPI has it:
  pip download --no-deps --index-url https://pypi.org/simple nvidia-cuda-cuobjdump -d /tmp/w
  (cd /tmp/w && unzip -o -q '*.whl') && export PATH=/tmp/w/nvidia/cu13/bin:$PATH
Then, for an object built for sm_90 (tools/gpu-check.sh --prepare builds build-gpu/):
  cuobjdump -sass build-gpu/CMakeFiles/mistral_cuda.dir/kernels/quant_gemv.cu.o > /tmp/k.sass
  tools/sass_loops.py /tmp/k.sass 'quant_gemv_kernelILNS_5DTypeE7ELi1ELi2ELb0'
The second argument is a substring of the mangled kernel name (the first match is shown). Each backward
branch is reported as a loop: its address range, instruction count and the most frequent opcodes. An
unrolled or duplicated body shows up as one loop with the copies' counts summed.
"""
import collections
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    text = open(sys.argv[1]).read()
    want = sys.argv[2]
    for func in re.split(r"\n\s*Function : ", text)[1:]:
        name = func.split("\n", 1)[0].strip()
        if want not in name:
            continue
        lines = re.findall(r"/\*([0-9a-f]{4,})\*/\s+((?:@!?U?P\w+\s+)?[A-Z][^;]*);", func)
        print(f"{name}: {len(lines)} instructions")
        for addr, ins in lines:
            if "BRA" not in ins:
                continue
            target = re.search(r"0x([0-9a-f]+)", ins.split("BRA", 1)[1])
            if not target or int(target.group(1), 16) >= int(addr, 16):
                continue
            lo, hi = int(target.group(1), 16), int(addr, 16)
            body = [i for a, i in lines if lo <= int(a, 16) <= hi]
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in body)
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(12))
            print(f"  loop {lo:#x}..{hi:#x}: {len(body)} instructions ({top})")
        return
    sys.exit(f"no kernel name contains {want!r}")


if __name__ == "__main__":
    main()
