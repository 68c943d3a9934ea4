package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	kafka "github.com/segmentio/kafka-go"
)

// readByReader: the seed's "Reader from an offset" (one partition, SetOffset).
func readByReader(opts options) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:   opts.brokers,
		Topic:     opts.topic,
		Partition: 0,
		MaxBytes:  10e6, // 10MB
		// Close waits for the fetch in flight: a short MaxWait (default 10s) keeps it quick.
		MaxWait: time.Second,
	})
	if err := r.SetOffset(opts.offset); err != nil {
		return err
	}
	err := readUntil(opts, func(ctx context.Context) error {
		m, err := r.ReadMessage(ctx)
		if err == nil {
			fmt.Printf("message at offset %d: %s = %s\n", m.Offset, string(m.Key), string(m.Value))
		}
		return err
	})
	if closeErr := r.Close(); err == nil {
		err = closeErr
	}
	return err
}

func groupReader(opts options, commitInterval time.Duration) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:        opts.brokers,
		GroupID:        opts.group,
		Topic:          opts.topic,
		MaxBytes:       10e6, // 10MB
		CommitInterval: commitInterval,
		MaxWait:        time.Second,
		// Short session and heartbeat so a test's next member joins quickly.
		SessionTimeout:    6 * time.Second,
		HeartbeatInterval: time.Second,
		Logger:            log.New(os.Stderr, "kafka-go: ", log.LstdFlags),
		ErrorLogger:       log.New(os.Stderr, "kafka-go error: ", log.LstdFlags),
	})
}

func printGroupMessage(m kafka.Message) {
	fmt.Printf("message at topic/partition/offset %v/%v/%v: %s = %s\n",
		m.Topic, m.Partition, m.Offset, string(m.Key), string(m.Value))
}

// consumerGroup: the seed's consumer group; ReadMessage commits each message.
func consumerGroup(opts options) error {
	return readGroup(opts, 0, func(ctx context.Context, r *kafka.Reader) error {
		m, err := r.ReadMessage(ctx)
		if err == nil {
			printGroupMessage(m)
		}
		return err
	})
}

// explicitCommit: the seed's FetchMessage + CommitMessages.
func explicitCommit(opts options) error {
	return readGroup(opts, 0, func(ctx context.Context, r *kafka.Reader) error {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return err
		}
		printGroupMessage(m)
		return r.CommitMessages(ctx, m)
	})
}

// commitInterval: the seed's CommitInterval: time.Second; Close flushes the last commits.
func commitInterval(opts options) error {
	return readGroup(opts, time.Second, func(ctx context.Context, r *kafka.Reader) error {
		m, err := r.ReadMessage(ctx)
		if err == nil {
			printGroupMessage(m)
		}
		return err
	})
}

func readGroup(opts options, interval time.Duration, read func(context.Context, *kafka.Reader) error) error {
	return readGroupWith(groupReader(opts, interval), opts, read)
}

func readGroupWith(r *kafka.Reader, opts options, read func(context.Context, *kafka.Reader) error) error {
	err := readUntil(opts, func(ctx context.Context) error { return read(ctx, r) })
	// With CommitInterval, 0.2.1's CommitMessages only queues the offsets on a buffered
	// channel; on Close its commit loop selects between that channel and the stop signal
	// at random and, once stopped, commits what it merged without draining the channel: the
	// last offsets can be lost (a client bug). -linger lets a periodic commit send them.
	time.Sleep(opts.linger)
	if closeErr := r.Close(); err == nil {
		err = closeErr
	}
	return err
}

// groupMember: one member of a consumer group (ReadMessage, committing each message) that
// logs its assignments ("subscribed to partitions: map[PARTITION:OFFSET ...]") on stderr
// and reads until a signal (or -count messages).
func groupMember(opts options) error {
	r := groupReader(opts, 0)
	return readGroupWith(r, opts, func(ctx context.Context, r *kafka.Reader) error {
		m, err := r.ReadMessage(ctx)
		if err == nil {
			printGroupMessage(m)
		}
		return err
	})
}
