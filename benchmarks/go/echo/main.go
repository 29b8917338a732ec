// Command echo is the benchmark's compiled echo backend, built on
// gorilla/websocket (no compression): every message goes back to its sender,
// on any path. By default it is gorilla's plain echo loop (ReadMessage,
// WriteMessage: one write per message). With -coalesce, gorilla does only the
// opening handshake, then every frame goes back as it came (same opcode, fin
// bit and payload) and the echoes of everything one read returned leave in
// one write: a much cheaper backend, for measuring bulk relaying.
//
//	echo -report-fd 3 [-coalesce]
//
// It binds 127.0.0.1:0, writes {"port": N} and a newline to the report file
// descriptor, and serves until its stdin closes or it gets SIGTERM.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  32 * 1024,
	WriteBufferSize: 32 * 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

var coalesce = flag.Bool("coalesce", false, "echo everything one read returned in one write")

func echo(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	if !*coalesce {
		echoMessages(ws)
		return
	}
	conn := ws.UnderlyingConn() // gorilla refuses clients that send before the 101: nothing is buffered
	defer conn.Close()
	in := make([]byte, 64*1024)
	out := make([]byte, 0, 64*1024)
	have := 0
	for {
		if have == len(in) { // one frame bigger than the buffer: grow it
			in = append(in, make([]byte, len(in))...)
		}
		n, err := conn.Read(in[have:])
		if err != nil {
			return
		}
		have += n
		pos := 0
		out = out[:0]
		closing := false
		for !closing {
			frame, size, ok := parse(in[pos:have])
			if !ok {
				break
			}
			pos += size
			switch frame.opcode {
			case 0x8: // close: answer with the same code and stop
				out = appendFrame(out, 0x80|0x8, frame.payload)
				closing = true
			case 0x9: // ping
				out = appendFrame(out, 0x80|0xA, frame.payload)
			case 0xA: // pong: nothing to do
			default:
				out = appendFrame(out, frame.b0, frame.payload)
			}
		}
		copy(in, in[pos:have])
		have -= pos
		if len(out) > 0 {
			if _, err := conn.Write(out); err != nil {
				return
			}
		}
		if closing {
			return
		}
	}
}

// echoMessages is gorilla's plain echo loop: one write per message.
func echoMessages(conn *websocket.Conn) {
	defer conn.Close()
	conn.SetReadLimit(16 << 20)
	for {
		kind, payload, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if err := conn.WriteMessage(kind, payload); err != nil {
			return
		}
	}
}

type frame struct {
	b0, opcode byte
	payload    []byte
}

// parse reads one complete client frame from buf and unmasks its payload in place.
func parse(buf []byte) (frame, int, bool) {
	if len(buf) < 2 {
		return frame{}, 0, false
	}
	b0, b1 := buf[0], buf[1]
	n, head := int(b1&0x7f), 2
	switch n {
	case 126:
		if len(buf) < 4 {
			return frame{}, 0, false
		}
		n, head = int(binary.BigEndian.Uint16(buf[2:4])), 4
	case 127:
		if len(buf) < 10 {
			return frame{}, 0, false
		}
		n, head = int(binary.BigEndian.Uint64(buf[2:10])), 10
	}
	var key []byte
	if b1&0x80 != 0 {
		if len(buf) < head+4 {
			return frame{}, 0, false
		}
		key = buf[head : head+4]
		head += 4
	}
	if len(buf) < head+n {
		return frame{}, 0, false
	}
	payload := buf[head : head+n]
	if key != nil {
		for i := range payload {
			payload[i] ^= key[i&3]
		}
	}
	return frame{b0: b0, opcode: b0 & 0x0f, payload: payload}, head + n, true
}

func appendFrame(out []byte, b0 byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		out = append(out, b0, byte(n))
	case n < 1<<16:
		out = append(out, b0, 126, byte(n>>8), byte(n))
	default:
		out = append(out, b0, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, payload...)
}

func main() {
	reportFd := flag.Int("report-fd", 1, "file descriptor for the one JSON report line")
	flag.Parse()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	report := os.NewFile(uintptr(*reportFd), "report")
	if err != nil {
		fmt.Fprintf(report, "{\"error\": %q}\n", err.Error())
		os.Exit(1)
	}
	fmt.Fprintf(report, "{\"port\": %d}\n", listener.Addr().(*net.TCPAddr).Port)
	report.Close()
	go func() {
		io.Copy(io.Discard, os.Stdin) // the coordinator closes stdin to stop us
		os.Exit(0)
	}()
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		<-stop
		os.Exit(0)
	}()
	signal.Ignore(syscall.SIGINT) // Ctrl-C reaches the whole group; the coordinator stops us
	server := &http.Server{Handler: http.HandlerFunc(echo)}
	server.Serve(listener)
}
