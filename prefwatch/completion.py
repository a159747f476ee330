"""Shell completion scripts for bash and zsh, generated from the argument parser itself.

    eval "$(prefwatch completion bash)"      # in ~/.bashrc
    eval "$(prefwatch completion zsh)"       # in ~/.zshrc

Subcommands and their options complete; everything else completes as file names.
"""

from __future__ import annotations

import argparse


def _commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {
                name: sorted(
                    opt for a in sub._actions for opt in a.option_strings if opt.startswith("--") and opt != "--help"
                )
                for name, sub in action.choices.items()
            }
    return {}


def bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = "\n".join(f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in commands.items())
    return f"""_prefwatch() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)} --help --version" -- "$cur"))
        return
    fi
    local opts=""
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _prefwatch prefwatch
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = "\n".join(
        f"        {name}) _arguments '*:file:_files' {' '.join(repr(o) for o in opts)} ;;"
        for name, opts in commands.items()
    )
    return f"""#compdef prefwatch
_prefwatch() {{
    if (( CURRENT == 2 )); then
        compadd -- {" ".join(commands)}
        return
    fi
    case "$words[2]" in
{cases}
    esac
}}
compdef _prefwatch prefwatch
"""
