#!/usr/bin/env zsh
# Prints, one per line, what zsh's completion system offers for a command line, the way a user
# gets it by pressing TAB: an interactive zsh in a pseudo-terminal (zpty) loads compinit and a
# completion script, and a widget bound to TAB runs the completion and prints every word it
# added (compadd is wrapped to record them). The technique is the one in
# https://unix.stackexchange.com/a/668827.
# Usage: zsh -f zsh_complete.zsh SCRIPT LINE   (exit 1 when zsh offered no answer in time)
emulate -L zsh
zmodload zsh/zpty || exit 2
local script=$1 line=$2

# What the shell in the pty runs: a line editor (vared) whose TAB is our widget.
local init=$(mktemp) || exit 2
cat > $init <<INIT
PS1= PROMPT= RPROMPT=
autoload -Uz compinit && compinit -u -D
source ${(q)script}
compadd() {
  builtin compadd -O __added "\$@"
  __all+=("\$__added[@]")
  builtin compadd "\$@"
}
__capture() {
  typeset -gaU __all=()
  unset 'compstate[vared]'
  _main_complete "\$@"
  print -rn -- \$'\\x02'
  print -rnl -- "\$__all[@]"
  print -rn -- \$'\\x03'
  exit
}
zle -C __capture complete-word __capture
bindkey '^I' __capture
print -rn -- \$'\\x01'
vared -c __line
INIT

zpty shell zsh -f -i
zpty -w shell "source ${(q)init}"
local out= chunk= i
# Wait until vared's line editor runs (it switches bracketed paste on: the terminal is raw
# then, and TAB reaches the widget), then type the line and TAB.
for i in {1..400}; do
  if zpty -r -t shell chunk; then out+=$chunk; [[ $out == *$'\x01'*$'\e[?2004h'* ]] && break; else sleep 0.05; fi
done
[[ $out == *$'\x01'*$'\e[?2004h'* ]] || { zpty -d shell; rm -f $init; exit 1 }
zpty -w -n shell "$line"$'\t'
out=
for i in {1..400}; do
  if zpty -r -t shell chunk; then out+=$chunk; [[ $out == *$'\x03'* ]] && break; else sleep 0.05; fi
done
zpty -d shell
rm -f $init
[[ $out == *$'\x03'* ]] || exit 1
out=${out#*$'\x02'}
print -r -- "${${out%%$'\x03'*}//$'\r'/}"
