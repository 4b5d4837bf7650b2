// A tiny HTTP service for holdfast's end-to-end tests: it answers what its
// own Go runtime sees, so a test can tell whether the GOMAXPROCS holdfast
// computed is the one the runtime really uses.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "loopback address to listen on")
	flag.Parse()
	http.HandleFunc("/runtime", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "GOMAXPROCS=%d\nNumCPU=%d\nGODEBUG=%s\nGOTRACEBACK=%s\nversion=%s\n",
			runtime.GOMAXPROCS(0), runtime.NumCPU(),
			os.Getenv("GODEBUG"), os.Getenv("GOTRACEBACK"), runtime.Version())
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, nil))
}
