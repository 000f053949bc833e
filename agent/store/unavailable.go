package store

import (
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// Unavailable reports whether err is Redis failing to serve a request for a
// while: unreachable, out of memory (noeviction), loading its data, a
// replica that cannot write, a cluster or a failover in progress. Work that
// failed so is to be done again once Redis is back, not counted against the
// name it was for. An error that carries a failed HTTP request (the CA's) is
// not Redis's, even though its transport error looks alike.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var replyErr redis.Error
	if errors.As(err, &replyErr) {
		msg := replyErr.Error()
		for _, prefix := range transientReplies {
			if strings.HasPrefix(msg, prefix) {
				return true
			}
		}
		return false
	}
	if errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) {
		return true
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// transientReplies are the error replies of a Redis that will serve the
// request again once it recovers.
var transientReplies = []string{"OOM ", "LOADING ", "READONLY ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN ",
	"BUSY ", "NOREPLICAS ", "NOTREADY ", "MISCONF "}
