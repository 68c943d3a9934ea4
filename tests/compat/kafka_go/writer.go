package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	kafka "github.com/segmentio/kafka-go"
)

var seedMessages = []kafka.Message{
	{Key: []byte("Key-A"), Value: []byte("Hello World!")},
	{Key: []byte("Key-B"), Value: []byte("One!")},
	{Key: []byte("Key-C"), Value: []byte("Two!")},
}

// writeByWriter: the seed's Writer with the LeastBytes balancer, acks=all (RequiredAcks -1;
// 0.2.1 has no kafka.RequireAll constant) and Async: Close flushes what is queued.
func writeByWriter(opts options) error {
	w := kafka.NewWriter(kafka.WriterConfig{
		Brokers:      opts.brokers,
		Topic:        opts.topic,
		Balancer:     &kafka.LeastBytes{},
		RequiredAcks: -1,
		Async:        true,
	})
	if err := w.WriteMessages(context.Background(), seedMessages...); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	fmt.Printf("wrote %d messages\n", len(seedMessages))
	return nil
}

// autoCreate: the seed's retry loop around a write to a topic that does not exist yet.
func autoCreate(opts options) error {
	w := kafka.NewWriter(kafka.WriterConfig{
		Brokers:      opts.brokers,
		Topic:        opts.topic,
		RequiredAcks: -1,
		// 0.2.1's Writer looks the partitions up at start and then every RebalanceInterval
		// (15s by default): while the broker is still creating the topic the first answer
		// has none, and every write fails until the next look-up.
		RebalanceInterval: 250 * time.Millisecond,
	})
	var err error
	const retries = 10
	for i := 0; i < retries; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = w.WriteMessages(ctx, seedMessages...)
		cancel()
		if errors.Is(err, kafka.LeaderNotAvailable) || errors.Is(err, context.DeadlineExceeded) ||
			errors.Is(err, kafka.UnknownTopicOrPartition) ||
			(err != nil && strings.HasPrefix(err.Error(), "failed to find any partitions")) {
			fmt.Printf("retrying after: %v\n", err)
			time.Sleep(250 * time.Millisecond)
			continue
		}
		break
	}
	if closeErr := w.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		fmt.Printf("wrote %d messages\n", len(seedMessages))
	}
	return err
}
