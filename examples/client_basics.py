"""A tour of ferric_ipc.Client against a running ferricd: python examples/client_basics.py [RUN_DIR]."""

import sys

from ferric_ipc import Client, CommandError


def main(run_dir=None):
    client = Client(run_dir)  # run directory: argument, else $FERRIC_RUN_DIR, else ./ferric-run
    client.ping()
    print(f"{client.shard_count} shards answering")

    client.set("greeting", "hello")
    print("get:", client.get("greeting"))  # b'hello', read from the mapped index when possible
    client.set("sess:42", b'{"user": 42}', ttl_ms=30 * 60 * 1000)
    print("ttl of sess:42 in ms:", client.pttl("sess:42"))
    print("visits:", client.incr("visits"))

    # Keys sharing a {hash tag} live on one shard, so a conditional write can check one and set the other.
    client.set("{user:42}:gen", b"7")
    written = client.set_if("{user:42}:profile", b"cached", guard_key="{user:42}:gen", expected=b"7")
    print("conditional set applied:", written)
    try:
        client.incr("greeting")
    except CommandError as exc:
        print(f"refused with {exc.code}: {exc}")

    pipe = client.pipeline()  # one frame per shard
    for i in range(100):
        pipe.set(f"bulk:{i}", str(i))
    pipe.execute()
    print("bulk keys:", sum(1 for _ in client.scan_iter("bulk:")))
    print("deleted:", client.delete_prefix("bulk:"))
    print("reads served locally / by a shard:", client.read_counts)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
