"""Print the commands of README.rst's "Quick start" code block, one a line.

.ci/run runs them as written, so the README and CI cannot drift apart.
"""
import sys


def quickstart_commands(text):
    lines = text.splitlines()
    start = lines.index("Quick start")
    commands, in_block = [], False
    for line in lines[start + 1:]:
        if line.strip().startswith(".. code-block:: bash"):
            in_block = True
            continue
        if in_block:
            if line.strip() and not line.startswith(" "):
                break
            if line.strip():
                commands.append(line.strip())
    return commands


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        commands = quickstart_commands(f.read())
    if len(commands) != 2:
        sys.exit(f"expected two commands in the Quick start, found {commands}")
    print("\n".join(commands))
