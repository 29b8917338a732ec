// Command loadgen is the benchmark's compiled WebSocket load generator.
//
//	loadgen load     -url U -conns N -inflight K -size B -warmup S -seconds S [-timed]
//	loadgen idle     -url U -conns N
//	loadgen upgrades -url U -conns C -warmup S -seconds S -size B
//
// It speaks to its coordinator (benchmarks/relay.py) in JSON lines on stdout:
// {"ready": n} once connected, {"mark": "t0"} and {"mark": "t1"} at the two
// ends of the measuring window (the coordinator reads the proxy's CPU time when
// it sees them), then {"result": {...}}. "idle" holds its connections, answering
// pings, until stdin closes. After the handshake a connection sends pre-built
// masked frames and counts echoed frames by their headers without looking at
// payloads, so the generator stays cheaper than whatever it measures. Each
// message leaves in a write of its own, as separate clients' messages would
// (-coalesce: the replacements for all the echoes one read returned leave in
// one write, for measuring bulk relaying).
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const dialParallel = 50 // concurrent handshakes: stays under listen backlogs

var out = json.NewEncoder(os.Stdout)

func emit(v any) { out.Encode(v) }

func fail(err error) {
	emit(map[string]string{"error": err.Error()})
	os.Exit(1)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// maskedFrame is one client frame; the mask key is random, as RFC 6455 wants.
func maskedFrame(opcode byte, payload []byte) []byte {
	n := len(payload)
	head := []byte{0x80 | opcode}
	switch {
	case n < 126:
		head = append(head, 0x80|byte(n))
	case n < 1<<16:
		head = append(head, 0x80|126, byte(n>>8), byte(n))
	default:
		head = append(head, 0x80|127)
		head = binary.BigEndian.AppendUint64(head, uint64(n))
	}
	key := make([]byte, 4)
	rand.Read(key)
	head = append(head, key...)
	for i, b := range payload {
		head = append(head, b^key[i%4])
	}
	return head
}

type target struct{ addr, path, host string }

func parseTarget(raw string) target {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "ws" {
		fail(fmt.Errorf("need a ws:// url, got %q", raw))
	}
	path := u.RequestURI()
	return target{addr: u.Host, path: path, host: u.Host}
}

// handshake dials and upgrades; the returned reader holds any bytes read past the response head.
func handshake(t target) (net.Conn, *bufio.Reader, error) {
	conn, err := net.Dial("tcp", t.addr)
	if err != nil {
		return nil, nil, err
	}
	req := "GET " + t.path + " HTTP/1.1\r\nHost: " + t.host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 64*1024)
	status, err := br.ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if !strings.Contains(status, " 101 ") {
		conn.Close()
		return nil, nil, fmt.Errorf("handshake refused: %s", strings.TrimSpace(status))
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		if line == "\r\n" {
			return conn, br, nil
		}
	}
}

// frameHead reads one frame header: fin, opcode, payload length.
func frameHead(br *bufio.Reader) (bool, byte, int, error) {
	b0, err := br.ReadByte()
	if err != nil {
		return false, 0, 0, err
	}
	b1, err := br.ReadByte()
	if err != nil {
		return false, 0, 0, err
	}
	n := int(b1 & 0x7f)
	if n == 126 {
		var ext [2]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return false, 0, 0, err
		}
		n = int(binary.BigEndian.Uint16(ext[:]))
	} else if n == 127 {
		var ext [8]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return false, 0, 0, err
		}
		n = int(binary.BigEndian.Uint64(ext[:]))
	}
	if b1&0x80 != 0 { // a masked server frame is a protocol error, but skip its key rather than desync
		var key [4]byte
		if _, err := io.ReadFull(br, key[:]); err != nil {
			return false, 0, 0, err
		}
	}
	return b0&0x80 != 0, b0 & 0x0f, n, nil
}

var errClosed = errors.New("closed by peer")

// control handles a control frame: answer pings (keepalive must not kill us), report closes.
func control(conn net.Conn, br *bufio.Reader, opcode byte, n int) error {
	payload := make([]byte, n)
	if _, err := io.ReadFull(br, payload); err != nil {
		return err
	}
	switch opcode {
	case 0x9:
		_, err := conn.Write(maskedFrame(0xA, payload))
		return err
	case 0x8:
		return fmt.Errorf("%w: %x", errClosed, payload)
	}
	return nil
}

func dialAll(t target, n int) ([]net.Conn, []*bufio.Reader, error) {
	conns := make([]net.Conn, n)
	readers := make([]*bufio.Reader, n)
	sem := make(chan struct{}, dialParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, br, err := handshake(t)
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				return
			}
			conns[i], readers[i] = c, br
		}(i)
	}
	wg.Wait()
	if first != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, nil, first
	}
	return conns, readers, nil
}

var closeFrame = maskedFrame(0x8, []byte{0x03, 0xe8}) // 1000

type leg struct {
	received int64 // atomic
	sentAt   []int64
	samples  []int64
	err      error
}

func load(args []string) {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	rawURL := fs.String("url", "", "ws:// url")
	nconns := fs.Int("conns", 50, "connections")
	inflight := fs.Int("inflight", 16, "messages in flight per connection")
	size := fs.Int("size", 64, "payload bytes of each text message")
	warmup := fs.Float64("warmup", 1, "seconds of load before the window")
	seconds := fs.Float64("seconds", 5, "measuring window")
	timed := fs.Bool("timed", false, "record round-trip times")
	coalesce := fs.Bool("coalesce", false, "send the replacements for a batch of echoes in one write")
	fs.Parse(args)
	t := parseTarget(*rawURL)
	conns, readers, err := dialAll(t, *nconns)
	if err != nil {
		fail(err)
	}
	emit(map[string]int{"ready": len(conns)})
	frame := maskedFrame(0x1, []byte(strings.Repeat("x", *size)))
	window := make([]byte, 0, len(frame)**inflight)
	for i := 0; i < *inflight; i++ {
		window = append(window, frame...)
	}
	var stopping, measuring atomic.Bool
	legs := make([]*leg, len(conns))
	var wg sync.WaitGroup
	base := time.Now()
	for i := range conns {
		l := &leg{}
		legs[i] = l
		wg.Add(1)
		go func(conn net.Conn, br *bufio.Reader, l *leg) {
			defer wg.Done()
			if *timed {
				now := int64(time.Since(base))
				for k := 0; k < *inflight; k++ {
					l.sentAt = append(l.sentAt, now)
				}
			}
			first, writes := window, 1
			if !*coalesce {
				first, writes = frame, *inflight
			}
			for k := 0; k < writes; k++ {
				if _, err := conn.Write(first); err != nil {
					l.err = err
					return
				}
			}
			pending := 0
			for {
				fin, opcode, n, err := frameHead(br)
				if err != nil {
					if !stopping.Load() {
						l.err = err
					}
					return
				}
				if opcode >= 8 {
					if err := control(conn, br, opcode, n); err != nil {
						if !stopping.Load() {
							l.err = err
						}
						return
					}
					continue
				}
				if n > 0 {
					if _, err := br.Discard(n); err != nil {
						if !stopping.Load() {
							l.err = err
						}
						return
					}
				}
				if !fin {
					continue
				}
				atomic.AddInt64(&l.received, 1)
				pending++
				if *timed {
					now := int64(time.Since(base))
					if measuring.Load() {
						l.samples = append(l.samples, now-l.sentAt[0])
					}
					l.sentAt = l.sentAt[1:]
				}
				if *coalesce && br.Buffered() > 0 || stopping.Load() {
					if stopping.Load() {
						pending = 0
					}
					continue
				}
				if *timed {
					now := int64(time.Since(base))
					for k := 0; k < pending; k++ {
						l.sentAt = append(l.sentAt, now)
					}
				}
				if _, err := conn.Write(window[:pending*len(frame)]); err != nil {
					if !stopping.Load() {
						l.err = err
					}
					return
				}
				pending = 0
			}
		}(conns[i], readers[i], l)
	}
	total := func() int64 {
		var sum int64
		for _, l := range legs {
			sum += atomic.LoadInt64(&l.received)
		}
		return sum
	}
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	measuring.Store(true)
	at0, cpu0, t0 := total(), cpuSeconds(), time.Now()
	emit(map[string]string{"mark": "t0"})
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	at1, cpu1, elapsed := total(), cpuSeconds(), time.Since(t0).Seconds()
	measuring.Store(false)
	emit(map[string]string{"mark": "t1"})
	stopping.Store(true)
	for _, c := range conns {
		c.Write(closeFrame)
		c.Close()
	}
	wg.Wait()
	var errs []string
	var samples []int64
	for _, l := range legs {
		if l.err != nil && len(errs) < 5 {
			errs = append(errs, l.err.Error())
		}
		samples = append(samples, l.samples...)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	result := map[string]any{
		"messages": at1 - at0, "seconds": elapsed, "cpu_seconds": cpu1 - cpu0, "errors": errs,
	}
	if len(samples) > 0 {
		pick := func(q float64) float64 { return float64(samples[int(q*float64(len(samples)-1)+0.5)]) / 1000 }
		result["p50_us"], result["p99_us"], result["samples"] = pick(0.50), pick(0.99), len(samples)
	}
	emit(map[string]any{"result": result})
}

func idle(args []string) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	rawURL := fs.String("url", "", "ws:// url")
	nconns := fs.Int("conns", 1000, "connections")
	fs.Parse(args)
	conns, readers, err := dialAll(parseTarget(*rawURL), *nconns)
	if err != nil {
		fail(err)
	}
	var stopping atomic.Bool
	var lost, pings int64
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func(conn net.Conn, br *bufio.Reader) {
			defer wg.Done()
			for {
				_, opcode, n, err := frameHead(br)
				if err == nil && opcode >= 8 {
					if opcode == 0x9 {
						atomic.AddInt64(&pings, 1)
					}
					err = control(conn, br, opcode, n)
				} else if err == nil {
					_, err = br.Discard(n)
				}
				if err != nil {
					if !stopping.Load() {
						atomic.AddInt64(&lost, 1)
					}
					return
				}
			}
		}(conns[i], readers[i])
	}
	emit(map[string]int{"ready": len(conns)})
	io.Copy(io.Discard, os.Stdin) // hold until the coordinator closes stdin
	lostNow, pingsNow := atomic.LoadInt64(&lost), atomic.LoadInt64(&pings)
	stopping.Store(true)
	for _, c := range conns {
		c.Write(closeFrame)
		c.Close()
	}
	wg.Wait()
	emit(map[string]any{"result": map[string]int64{"held": int64(len(conns)) - lostNow, "lost": lostNow, "pings": pingsNow}})
}

// upgrades runs a concurrent loop of whole connections: connect, handshake, one message, close handshake.
func upgrades(args []string) {
	fs := flag.NewFlagSet("upgrades", flag.ExitOnError)
	rawURL := fs.String("url", "", "ws:// url")
	nconns := fs.Int("conns", 16, "concurrent loops")
	size := fs.Int("size", 64, "payload bytes of the one message")
	warmup := fs.Float64("warmup", 1, "seconds before the window")
	seconds := fs.Float64("seconds", 5, "measuring window")
	fs.Parse(args)
	t := parseTarget(*rawURL)
	frame := maskedFrame(0x1, []byte(strings.Repeat("x", *size)))
	var done, failed int64
	var firstErr atomic.Value
	var stopping atomic.Bool
	one := func() error {
		conn, br, err := handshake(t)
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.Write(frame); err != nil {
			return err
		}
		for {
			fin, opcode, n, err := frameHead(br)
			if err != nil {
				return err
			}
			if opcode >= 8 {
				if err := control(conn, br, opcode, n); err != nil {
					return err
				}
				continue
			}
			if _, err := br.Discard(n); err != nil {
				return err
			}
			if fin {
				break
			}
		}
		if _, err := conn.Write(closeFrame); err != nil {
			return err
		}
		for { // wait for the peer's close frame (or its end of the connection)
			_, opcode, n, err := frameHead(br)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if opcode == 0x8 {
				return nil
			}
			if _, err := br.Discard(n); err != nil {
				return err
			}
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < *nconns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopping.Load() {
				if err := one(); err != nil {
					atomic.AddInt64(&failed, 1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(time.Millisecond)
					continue
				}
				atomic.AddInt64(&done, 1)
			}
		}()
	}
	emit(map[string]int{"ready": *nconns})
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	at0, failed0, cpu0, t0 := atomic.LoadInt64(&done), atomic.LoadInt64(&failed), cpuSeconds(), time.Now()
	emit(map[string]string{"mark": "t0"})
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	at1, failed1, cpu1, elapsed := atomic.LoadInt64(&done), atomic.LoadInt64(&failed), cpuSeconds(), time.Since(t0).Seconds()
	emit(map[string]string{"mark": "t1"})
	stopping.Store(true)
	wg.Wait()
	var errs []string
	if e, ok := firstErr.Load().(string); ok {
		errs = append(errs, e)
	}
	emit(map[string]any{"result": map[string]any{
		"messages": at1 - at0, "failed": failed1 - failed0, "seconds": elapsed, "cpu_seconds": cpu1 - cpu0, "errors": errs,
	}})
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: loadgen load|idle|upgrades [flags]"))
	}
	switch os.Args[1] {
	case "load":
		load(os.Args[2:])
	case "idle":
		idle(os.Args[2:])
	case "upgrades":
		upgrades(os.Args[2:])
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}
