#!/bin/sh
# lib/ must stay pure: no event loop, no Redis client, no sockets, no clock reads,
# no process spawning. Time is passed in by the caller.
dir=${1:?usage: check_lib_purity.sh LIBDIR}
bad=$(grep -nE '#include *[<"](uv|hiredis/|sys/socket|netinet/|sys/wait|spawn)|\b(time|gettimeofday|clock_gettime|fork|execv[pe]?|popen|system|socket)\s*\(' "$dir"/*.c "$dir"/*.h 2>/dev/null \
      | grep -vE '^\S+:[0-9]+:\s*(/?\*|//)')
if [ -n "$bad" ]; then
    echo "lib purity violated:"
    echo "$bad"
    exit 1
fi
echo "lib purity: ok"
