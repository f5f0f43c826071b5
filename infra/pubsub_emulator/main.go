// Command pubsub_emulator serves Google's Pub/Sub fake (cloud.google.com/go/pubsub/pstest)
// over gRPC on a fixed address, for the `emulator` environment of buildflow.
//
// It is built in GOPATH mode from Debian's Go sources (package golang-google-cloud-dev,
// pstest 0.56.0), so nothing comes from the Go module proxy:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o .buildflow/stack/bin/pubsub-emulator ./infra/pubsub_emulator
//
// infra/stack.py builds and starts it; see infra/README.md.
//
// What this main adds to pstest 0.56.0:
//   - a fixed listen address (--addr): pstest.NewServer() only listens on a random port, so
//     its GServer is registered on a grpc.Server of our own;
//   - CreateSubscription with ack_deadline_seconds 0 gets 10 s, as on the real service
//     (pstest rejects 0);
//   - RPCs that pstest does not implement (snapshots, ModifyPushConfig, ...) answer
//     UNIMPLEMENTED instead of panicking the whole process, and so does Seek, which corrupts
//     pstest's state (the next Pull panics); any other panic becomes INTERNAL;
//   - --min-ack-deadline lowers the minimum ack deadline (default 10 s) for fast redelivery;
//   - "ready" on stdout once listening; SIGTERM/SIGINT stop the server and exit 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/pstest"
	pb "google.golang.org/genproto/googleapis/pubsub/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultAckDeadlineSecs is what the real service uses when a subscription is created
// with ack_deadline_seconds 0 (https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#subscription).
const defaultAckDeadlineSecs = 10

// implemented lists the RPCs that pstest 0.56.0's GServer really implements. Every other
// method of the Publisher and Subscriber services is an embedded nil interface in GServer
// and would panic with a nil-pointer dereference.
var implemented = map[string]bool{
	"/google.pubsub.v1.Publisher/CreateTopic":            true,
	"/google.pubsub.v1.Publisher/GetTopic":               true,
	"/google.pubsub.v1.Publisher/UpdateTopic":            true,
	"/google.pubsub.v1.Publisher/ListTopics":             true,
	"/google.pubsub.v1.Publisher/ListTopicSubscriptions": true,
	"/google.pubsub.v1.Publisher/DeleteTopic":            true,
	"/google.pubsub.v1.Publisher/Publish":                true,
	"/google.pubsub.v1.Subscriber/CreateSubscription":    true,
	"/google.pubsub.v1.Subscriber/GetSubscription":       true,
	"/google.pubsub.v1.Subscriber/UpdateSubscription":    true,
	"/google.pubsub.v1.Subscriber/ListSubscriptions":     true,
	"/google.pubsub.v1.Subscriber/DeleteSubscription":    true,
	"/google.pubsub.v1.Subscriber/Acknowledge":           true,
	"/google.pubsub.v1.Subscriber/ModifyAckDeadline":     true,
	"/google.pubsub.v1.Subscriber/Pull":                  true,
	"/google.pubsub.v1.Subscriber/StreamingPull":         true,
}

// refused lists RPCs that pstest implements badly enough that refusing them is safer.
var refused = map[string]string{
	"/google.pubsub.v1.Subscriber/Seek": "Seek corrupts the state of pstest 0.56.0 (the next Pull panics)",
}

func checkMethod(method string) error {
	if why, ok := refused[method]; ok {
		return status.Errorf(codes.Unimplemented, "%s is not supported by the local Pub/Sub fake: %s", method, why)
	}
	if !implemented[method] {
		return status.Errorf(codes.Unimplemented, "%s is not implemented by the local Pub/Sub fake (pstest 0.56.0)", method)
	}
	return nil
}

func panicToStatus(method string, r interface{}) error {
	log.Printf("panic in %s: %v\n%s", method, r, debug.Stack())
	return status.Errorf(codes.Internal, "the local Pub/Sub fake panicked in %s: %v", method, r)
}

func unaryInterceptor(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp interface{}, err error) {
	if err := checkMethod(info.FullMethod); err != nil {
		return nil, err
	}
	if sub, ok := req.(*pb.Subscription); ok && info.FullMethod == "/google.pubsub.v1.Subscriber/CreateSubscription" {
		if sub.AckDeadlineSeconds == 0 {
			sub.AckDeadlineSeconds = defaultAckDeadlineSecs
		}
	}
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, panicToStatus(info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}

// streamInterceptor recovers panics of the handler's own goroutine only: a panic in a
// goroutine that pstest starts for a stream would still end the process.
func streamInterceptor(srv interface{}, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	if err := checkMethod(info.FullMethod); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			err = panicToStatus(info.FullMethod, r)
		}
	}()
	return handler(srv, ss)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8085", "host:port to listen on")
	minAckDeadline := flag.Duration("min-ack-deadline", 0,
		"minimum ack deadline accepted by CreateSubscription/ModifyAckDeadline, at least 1s (default: pstest's 10s)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	if *minAckDeadline != 0 {
		if *minAckDeadline < time.Second {
			fmt.Fprintf(os.Stderr, "--min-ack-deadline must be at least 1s, got %v\n", *minAckDeadline)
			os.Exit(2)
		}
		pstest.SetMinAckDeadline(*minAckDeadline)
	}

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot listen on %s: %v\n", *addr, err)
		os.Exit(1)
	}

	// pstest 0.56.0 has no constructor for a GServer on a given address, and GServer's
	// fields are unexported: build one with NewServer(), close the server it started on a
	// random port, and serve the same GServer on our listener. (The line
	// "testutil.Server.Start: grpc: the server has been stopped" in the log is that
	// server's goroutine noticing, and is expected.)
	fake := pstest.NewServer()
	if err := fake.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "cannot close pstest's own listener: %v\n", err)
		os.Exit(1)
	}
	gsrv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(unaryInterceptor),
		grpc.ChainStreamInterceptor(streamInterceptor),
	)
	pb.RegisterPublisherServer(gsrv, &fake.GServer)
	pb.RegisterSubscriberServer(gsrv, &fake.GServer)

	served := make(chan error, 1)
	go func() { served <- gsrv.Serve(lis) }()
	log.Printf("pstest listening on %s", lis.Addr())
	fmt.Println("ready")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-sigs:
		log.Printf("%v: stopping", sig)
	case err := <-served:
		log.Printf("server stopped: %v", err)
		os.Exit(1)
	}
	// Open streaming pulls would hold GracefulStop forever: give them 2 s.
	stopped := make(chan struct{})
	go func() { gsrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		gsrv.Stop()
	}
	os.Exit(0)
}
