// Command kafka_go runs the seed's kafka-go examples, adapted to kafka-go 0.2.1 (Debian's
// golang-github-segmentio-kafka-go-dev), against a raftmq cluster's Kafka listener.
// tests/compat/test_kafka_go.py compiles it once per session and checks what it prints.
//
// Usage: kafka_go EXAMPLE -brokers HOST:PORT,... -topic NAME [flags]
//
// Where 0.2.1 differs from the seed (written for kafka-go 0.4):
//   - no kafka.Writer{Addr: kafka.TCP(...)} literal: 0.2.1 has kafka.NewWriter(WriterConfig)
//     with Brokers []string;
//   - no Writer.AllowAutoTopicCreation: 0.2.1 asks Metadata v1 for the topic, which a
//     broker with auto-create on answers by creating it (LEADER_NOT_AVAILABLE until it has
//     a leader, the error the seed's retry loop waits out);
//   - no Message.Topic on writes and no WriterConfig without Topic: one 0.2.1 Writer
//     writes one topic, so "one Writer for several topics" cannot be expressed;
//   - no Message.Headers: 0.2.1 writes and reads message sets (magic 1) that have none.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type options struct {
	brokers []string
	topic   string
	group   string
	offset  int64
	count   int
	timeout time.Duration
	linger  time.Duration
}

var examples = map[string]func(options) error{
	"reader-offset":   readByReader,
	"consumer-group":  consumerGroup,
	"explicit-commit": explicitCommit,
	"commit-interval": commitInterval,
	"group-member":    groupMember,
	"writer":          writeByWriter,
	"auto-create":     autoCreate,
}

func main() {
	if len(os.Args) < 2 || examples[os.Args[1]] == nil {
		log.Fatalf("usage: kafka_go {reader-offset|consumer-group|explicit-commit|commit-interval|group-member|writer|auto-create} [flags]")
	}
	name := os.Args[1]
	flags := flag.NewFlagSet(name, flag.ExitOnError)
	brokers := flags.String("brokers", "localhost:9092,localhost:9093,localhost:9094", "bootstrap brokers")
	topic := flags.String("topic", "topic-A", "topic")
	group := flags.String("group", "consumer-group-id", "consumer group id")
	offset := flags.Int64("offset", 42, "start offset (reader-offset)")
	count := flags.Int("count", 0, "stop after this many messages (readers)")
	timeout := flags.Duration("timeout", 60*time.Second, "give up after this long")
	linger := flags.Duration("linger", 0, "wait this long before closing a group reader")
	if err := flags.Parse(os.Args[2:]); err != nil {
		log.Fatal(err)
	}
	opts := options{strings.Split(*brokers, ","), *topic, *group, *offset, *count, *timeout, *linger}
	if err := examples[name](opts); err != nil {
		log.Fatalf("%s: %v", name, err)
	}
}

// readUntil calls read until it has returned count messages, or returns the error that
// stopped it; the whole run is bounded by opts.timeout. Count 0: until SIGTERM or SIGINT,
// which end it without an error (the seed's advice: close the Reader on a signal, so the
// group sees the member leave instead of waiting out its session).
func readUntil(opts options, read func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	for i := 0; opts.count == 0 || i < opts.count; i++ {
		if err := read(ctx); err != nil {
			if opts.count == 0 && errors.Is(err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("after %d of %d messages: %w", i, opts.count, err)
		}
	}
	return nil
}
