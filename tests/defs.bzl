"""Rules shared by the gRPC tests: each runs echo_server (and maybe
echo_client) as separate processes against the shmgrpc library."""

def grpc_process_test(name, data = [], deps = [], tags = []):
    """A medium cc_test from <name>.cc with the echo test harness."""
    native.cc_test(
        name = name,
        size = "medium",
        srcs = [name + ".cc"],
        data = data,
        tags = tags,
        deps = [
            ":echo_fixture",
            ":echo_logic",
            ":echo_proto",
            ":server_process",
            "//:shmgrpc",
            "//bazel:gtest_main",
        ] + deps,
    )
