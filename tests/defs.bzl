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

def grpc_cc_proto(name, src):
    """C++ messages and gRPC service code for one .proto in this package.

    The proto path is the repository's root ("." here, "external/shmgrpc"
    when another workspace uses this one), so generated code includes
    "tests/<file>.pb.h" either way.
    """
    base = src[:-len(".proto")]
    generated = [base + ext for ext in [".pb.h", ".pb.cc", ".grpc.pb.h", ".grpc.pb.cc"]]
    native.genrule(
        name = name + "_gen",
        srcs = [src],
        outs = generated,
        cmd = ("root=$$(dirname $$(dirname $(location {src}))); " +
               "/usr/bin/protoc --proto_path=$$root --cpp_out=$(GENDIR)/$$root " +
               "--grpc_out=$(GENDIR)/$$root " +
               "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin $(location {src})").format(src = src),
    )
    native.cc_library(
        name = name,
        srcs = [base + ".grpc.pb.cc", base + ".pb.cc"],
        hdrs = [base + ".grpc.pb.h", base + ".pb.h"],
        deps = ["//bazel:grpc"],
    )
