// One node of the simulated public libp2p network that peerlog's namespace tests build: a
// js-libp2p node (an implementation independent of rust-libp2p) serving what public IPFS
// nodes serve: an Amino DHT server (`/ipfs/kad/1.0.0`, private addresses dropped from what
// it stores and tells, as on the real network), a circuit relay v2 with kubo's limits
// (128 KiB and 2 minutes per circuit), identify, AutoNAT and ping.
//
//   node sim-node.mjs --listen /ip4/11.0.0.11/tcp/4001 [--bootstrap MULTIADDR]... [--key rsa]
//
// `--key rsa`: an RSA identity (a `Qm…` PeerId), as the real public bootstrap nodes have;
// otherwise Ed25519.
//
// Prints one line `ready <multiaddr>/p2p/<peer id>` on stdout once it listens, then runs
// until killed. Logs what it does for peerlog's records on stderr (`provider added`,
// `reservation`), so a test can tell what reached it.
//
// It only ever dials the addresses it is given, and the peers they lead to.

// js-libp2p 3.x uses Promise.withResolvers (Node 22); the machine's Node is 20.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { autoNAT } = await import('@libp2p/autonat')
const { kadDHT, removePrivateAddressesMapper } = await import('@libp2p/kad-dht')
const { circuitRelayServer } = await import('@libp2p/circuit-relay-v2')
const { multiaddr } = await import('@multiformats/multiaddr')
const { generateKeyPair } = await import('@libp2p/crypto/keys')

const args = process.argv.slice(2)
const listen = []
const bootstrap = []
let keyType = 'Ed25519'
for (let i = 0; i < args.length; i += 2) {
  if (args[i] === '--listen') listen.push(args[i + 1])
  else if (args[i] === '--bootstrap') bootstrap.push(args[i + 1])
  else if (args[i] === '--key' && args[i + 1] === 'rsa') keyType = 'RSA'
  else throw new Error(`unknown argument ${args[i]}`)
}
if (listen.length === 0) throw new Error('--listen is required')

const node = await createLibp2p({
  privateKey: await generateKeyPair(keyType, 2048),
  // Public listen addresses, announced as they are (the real public nodes know theirs).
  addresses: { listen, announce: listen },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    autoNAT: autoNAT(),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      peerInfoMapper: removePrivateAddressesMapper
    }),
    relay: circuitRelayServer({
      reservations: {
        maxReservations: 128,
        defaultDataLimit: 131072n,
        defaultDurationLimit: 120000
      }
    })
  }
})

// A public node: it is a DHT server from the start (the real ones are, being reachable).
await node.services.dht.setMode('server')

node.addEventListener('peer:identify', (evt) => {
  const { peerId, agentVersion } = evt.detail
  process.stderr.write(`identify ${peerId} ${agentVersion ?? ''}\n`)
})

// What peerlog stores here: provider records (the rooms it announces) and reservations.
const providers = node.services.dht.providers
if (providers != null && typeof providers.addProvider === 'function') {
  const add = providers.addProvider.bind(providers)
  providers.addProvider = async (cid, provider, ...rest) => {
    process.stderr.write(`provider added ${cid} ${provider}\n`)
    return add(cid, provider, ...rest)
  }
}

for (const addr of bootstrap) {
  try {
    await node.dial(multiaddr(addr))
  } catch (err) {
    process.stderr.write(`cannot dial bootstrap ${addr}: ${err.message}\n`)
  }
}

const addr = `${listen[0]}/p2p/${node.peerId}`
process.stdout.write(`ready ${addr}\n`)

const stop = async () => { await node.stop(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
