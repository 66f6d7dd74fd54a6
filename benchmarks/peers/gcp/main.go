// A minimal ADS server on go-control-plane's snapshot cache: the benchmark's reference peer.
//
// It serves N EDS clusters (svc-<i>, one endpoint each), one listener with one RDS route
// configuration holding one virtual host per cluster, the way meshpilot's benchmark mesh
// looks to one sidecar. POST /change?what=endpoint on -http alternates svc-0's endpoint port,
// POST /change?what=route puts the new version in svc-0's virtual host's response header
// "x-peer-version"; either sets a new snapshot. Nothing else: the Go reference.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

const routeName = "http.80"

func clusterName(i int) string { return fmt.Sprintf("svc-%d", i) }

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

// An EDS cluster, like the sidecar clusters meshpilot serves.
func makeCluster(i int) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 clusterName(i),
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
	}
}

func makeEndpoints(i int, upstream string, port uint32) *endpoint.ClusterLoadAssignment {
	return &endpoint.ClusterLoadAssignment{
		ClusterName: clusterName(i),
		Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
						Address: upstream, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
					}}},
				}},
			}},
		}},
	}
}

func makeVirtualHost(i int, version string) *route.VirtualHost {
	name := clusterName(i)
	return &route.VirtualHost{
		Name:    name,
		Domains: []string{name, name + ".default.svc.cluster.local"},
		Routes: []*route.Route{{
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name}}},
		}},
		ResponseHeadersToAdd: []*core.HeaderValueOption{{
			Header: &core.HeaderValue{Key: "x-peer-version", Value: version},
		}},
	}
}

func makeListener(address string, port uint32) *listener.Listener {
	routerAny, err := anypb.New(&router.Router{})
	if err != nil {
		log.Fatal(err)
	}
	manager := &hcm.HttpConnectionManager{
		StatPrefix: "peer",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			RouteConfigName: routeName,
			ConfigSource:    adsSource(),
		}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerAny}}},
	}
	managerAny, err := anypb.New(manager)
	if err != nil {
		log.Fatal(err)
	}
	return &listener.Listener{
		Name: "http",
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: address, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
		}}},
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: managerAny},
		}}}},
	}
}

type mesh struct {
	mu        sync.Mutex
	cache     cachev3.SnapshotCache
	clusters  []types.Resource
	endpoints []types.Resource
	hosts     []*route.VirtualHost
	listeners []types.Resource
	version   int
	// Per type: a change resends only the type it changed.
	endpointsVersion, routesVersion string
	second                          bool // svc-0's endpoint is on the second port
	upstream                        string
	ports                           [2]uint32
}

// publish sets a snapshot in which only the changed type carries a new version (clusters and
// listeners never change here), so a change resends that type, not all of them.
func (m *mesh) publish() error {
	snap := &cachev3.Snapshot{}
	snap.Resources[types.Cluster] = cachev3.NewResources("1", m.clusters)
	snap.Resources[types.Endpoint] = cachev3.NewResources(m.endpointsVersion, m.endpoints)
	snap.Resources[types.Route] = cachev3.NewResources(m.routesVersion,
		[]types.Resource{&route.RouteConfiguration{Name: routeName, VirtualHosts: m.hosts}})
	snap.Resources[types.Listener] = cachev3.NewResources("1", m.listeners)
	if err := snap.Consistent(); err != nil {
		return err
	}
	// One Envoy: the snapshot is set for the node id the benchmark gives it.
	return m.cache.SetSnapshot(context.Background(), nodeID, snap)
}

var nodeID string

func main() {
	n := flag.Int("services", 1000, "clusters and virtual hosts")
	xdsAddr := flag.String("xds", "127.0.0.1:18000", "gRPC ADS address")
	httpAddr := flag.String("http", "127.0.0.1:18001", "control address: POST /change")
	listenerAddr := flag.String("listener-address", "127.0.0.1", "the Envoy listener's address")
	listenerPort := flag.Uint("listener-port", 80, "the Envoy listener's port")
	upstream := flag.String("upstream", "127.0.0.1", "endpoint address of every cluster")
	upstreamPort := flag.Uint("upstream-port", 8080, "endpoint port (svc-0's alternates with upstream-port2)")
	upstreamPort2 := flag.Uint("upstream-port2", 8081, "svc-0's endpoint port after an odd number of endpoint changes")
	flag.StringVar(&nodeID, "node", "peer", "the Envoy node id")
	flag.Parse()

	m := &mesh{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), version: 1, upstream: *upstream,
		endpointsVersion: "1", routesVersion: "1",
		ports: [2]uint32{uint32(*upstreamPort), uint32(*upstreamPort2)}}
	for i := 0; i < *n; i++ {
		m.clusters = append(m.clusters, makeCluster(i))
		m.endpoints = append(m.endpoints, makeEndpoints(i, *upstream, m.ports[0]))
		m.hosts = append(m.hosts, makeVirtualHost(i, "1"))
	}
	m.listeners = []types.Resource{makeListener(*listenerAddr, uint32(*listenerPort))}
	if err := m.publish(); err != nil {
		log.Fatal(err)
	}

	// POST /change?what=endpoint: svc-0's endpoint port alternates (EDS);
	// POST /change?what=route: svc-0's virtual host's x-peer-version header (RDS).
	http.HandleFunc("/change", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.version++
		version := strconv.Itoa(m.version)
		switch r.URL.Query().Get("what") {
		case "endpoint":
			m.second = !m.second
			port := m.ports[0]
			if m.second {
				port = m.ports[1]
			}
			m.endpoints[0] = makeEndpoints(0, m.upstream, port)
			m.endpointsVersion = version
		case "route":
			m.hosts[0] = makeVirtualHost(0, version)
			m.routesVersion = version
		default:
			http.Error(w, "what=endpoint or what=route", 400)
			return
		}
		if err := m.publish(); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintln(w, version)
	})
	go func() { log.Fatal(http.ListenAndServe(*httpAddr, nil)) }()

	lis, err := net.Listen("tcp", *xdsAddr)
	if err != nil {
		log.Fatal(err)
	}
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(1000))
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, serverv3.NewServer(context.Background(), m.cache, nil))
	fmt.Fprintln(os.Stderr, "ready")
	log.Fatal(grpcServer.Serve(lis))
}
