// A DTLS 1.2 Connection ID (RFC 9146) client on Bouncy Castle bctls (1.80), for
// tests/interop/test_dtls_cid.py. Built by scripts/build-cid-peers.sh:
//
//   javac -cp bctls.jar:bcprov.jar:bcutil.jar -d classes BcCidClient.java
//   java -cp bctls.jar:bcprov.jar:bcutil.jar:classes BcCidClient \
//       HOST PORT IDENTITY PSK_HEX CID [rebind] PATH [PATH2]
//
// CID: the connection ID we ask the server to put on the records it sends us, in hex; "" asks
// for none but announces support (an empty CID, RFC 9146 §3); "none" leaves the extension out.
// It does a PSK handshake (TLS_PSK_WITH_AES_128_CCM_8, DTLS 1.2 only), prints the negotiated CIDs
// and sends a CoAP CON GET for PATH. With "rebind" it then moves to a NEW local UDP port (a new
// DatagramSocket under the same DTLSTransport: same session, keys, epoch and record sequence
// numbers, i.e. a simulated NAT rebinding) and sends a second GET for PATH2 (default PATH) over
// the same session. Without "rebind" a PATH2 is fetched from the same port.
//
// Output, one fact a line (the test parses these):
//   handshake: ok in 12.3 ms, version=DTLS 1.2, suite=0xc0a8
//   cid-receive: <hex or empty>  (the CID on the records we receive: what we asked for)
//   cid-send: <hex or empty>     (the CID we put on the records we send: the server's)
//   bc-security-parameters: connectionIDLocal=... connectionIDPeer=...
// (BC 1.80 names them the other way round: its connectionIDLocal is the CID the server asked
// for, on our records, and connectionIDPeer the one we asked for, on the server's records.)
//   local-port: 40000
//   response 1: 2.05 mid=0x1234 bytes=87      (or: "response 1: not CoAP, 120 bytes")
//   --- payload 1 ---
//   ...payload as UTF-8...
//   --- end 1 ---
//   rebind: local port 40000 -> 40001
//   response 2: ...
// Exit status: 0 all answered, 2 usage, 3 handshake failed, 4 a request was not answered.
// Every wait is bounded: handshake 10 s, each request 4 transmissions 2 s apart.

import java.io.IOException;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;

import org.bouncycastle.tls.CipherSuite;
import org.bouncycastle.tls.DTLSClientProtocol;
import org.bouncycastle.tls.DTLSTransport;
import org.bouncycastle.tls.DatagramTransport;
import org.bouncycastle.tls.PSKTlsClient;
import org.bouncycastle.tls.ProtocolVersion;
import org.bouncycastle.tls.SecurityParameters;
import org.bouncycastle.tls.TlsClientContext;
import org.bouncycastle.tls.crypto.impl.bc.BcTlsCrypto;

public final class BcCidClient {
    static final int HANDSHAKE_TIMEOUT_MS = 10_000;
    static final int RESPONSE_TIMEOUT_MS = 2_000;
    static final int TRANSMISSIONS = 4;
    static final SecureRandom RANDOM = new SecureRandom();

    /** A DatagramTransport whose UDP socket can be replaced under a running DTLS session. */
    static final class SwappableUdpTransport implements DatagramTransport {
        private final InetSocketAddress peer;
        private DatagramSocket socket;

        SwappableUdpTransport(InetSocketAddress peer) throws IOException {
            this.peer = peer;
            this.socket = open();
        }

        private DatagramSocket open() throws IOException {
            DatagramSocket s = new DatagramSocket(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0));
            s.connect(peer); // only the server's datagrams
            return s;
        }

        synchronized int localPort() {
            return socket.getLocalPort();
        }

        /** Move to a new local port; the old socket is closed (its port is gone for good). */
        synchronized int rebind() throws IOException {
            DatagramSocket old = socket;
            socket = open();
            old.close();
            return socket.getLocalPort();
        }

        @Override
        public int getReceiveLimit() {
            return 1500 - 20 - 8;
        }

        @Override
        public int getSendLimit() {
            return 1500 - 84 - 8;
        }

        @Override
        public int receive(byte[] buf, int off, int len, int waitMillis) throws IOException {
            DatagramSocket s;
            synchronized (this) {
                s = socket;
            }
            s.setSoTimeout(Math.max(1, waitMillis));
            DatagramPacket packet = new DatagramPacket(buf, off, len);
            try {
                s.receive(packet);
            } catch (SocketTimeoutException e) {
                return -1;
            } catch (java.net.PortUnreachableException e) {
                return -1; // ICMP from a server not (yet) listening: like a lost datagram
            }
            return packet.getLength();
        }

        @Override
        public void send(byte[] buf, int off, int len) throws IOException {
            DatagramSocket s;
            synchronized (this) {
                s = socket;
            }
            s.send(new DatagramPacket(buf, off, len, peer));
        }

        @Override
        public synchronized void close() {
            socket.close();
        }
    }

    /** PSK, DTLS 1.2 only, TLS_PSK_WITH_AES_128_CCM_8, asking for a connection ID. */
    static final class CidPskClient extends PSKTlsClient {
        private final byte[] cid; // null: no extension

        CidPskClient(String identity, byte[] psk, byte[] cid) {
            super(new BcTlsCrypto(RANDOM), identity.getBytes(StandardCharsets.UTF_8), psk);
            this.cid = cid;
        }

        @Override
        protected ProtocolVersion[] getSupportedVersions() {
            return ProtocolVersion.DTLSv12.only();
        }

        @Override
        protected int[] getSupportedCipherSuites() {
            return new int[] {CipherSuite.TLS_PSK_WITH_AES_128_CCM_8};
        }

        @Override
        protected byte[] getNewConnectionID() {
            return cid == null ? null : cid.clone();
        }

        @Override
        public int getHandshakeTimeoutMillis() {
            return HANDSHAKE_TIMEOUT_MS;
        }

        @Override
        public void notifyAlertRaised(short level, short description, String message, Throwable cause) {
            System.out.println("alert raised: level=" + level + " description=" + description
                    + (message == null ? "" : " (" + message + ")"));
        }

        @Override
        public void notifyAlertReceived(short level, short description) {
            System.out.println("alert received: level=" + level + " description=" + description);
        }

        TlsClientContext clientContext() {
            return context;
        }
    }

    // -- CoAP --------------------------------------------------------------------------------
    static byte[] coapGet(int mid, byte[] token, String path) {
        List<byte[]> segments = new ArrayList<>();
        for (String segment : path.split("/")) {
            if (!segment.isEmpty()) {
                segments.add(segment.getBytes(StandardCharsets.UTF_8));
            }
        }
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        out.write(0x40 | token.length); // version 1, CON
        out.write(0x01); // GET
        out.write(mid >> 8);
        out.write(mid & 0xFF);
        out.write(token, 0, token.length);
        int last = 0;
        for (byte[] segment : segments) {
            writeOption(out, 11 - last, segment); // Uri-Path
            last = 11;
        }
        return out.toByteArray();
    }

    static void writeOption(java.io.ByteArrayOutputStream out, int delta, byte[] value) {
        int length = value.length;
        int d = delta < 13 ? delta : delta < 269 ? 13 : 14;
        int l = length < 13 ? length : length < 269 ? 13 : 14;
        out.write(d << 4 | l);
        if (d == 13) out.write(delta - 13);
        if (d == 14) { out.write((delta - 269) >> 8); out.write((delta - 269) & 0xFF); }
        if (l == 13) out.write(length - 13);
        if (l == 14) { out.write((length - 269) >> 8); out.write((length - 269) & 0xFF); }
        out.write(value, 0, value.length);
    }

    /** A parsed CoAP message, or null when the bytes are not CoAP. */
    static final class Coap {
        int type, code, mid;
        byte[] token;
        byte[] payload = new byte[0];

        static Coap parse(byte[] buf, int len) {
            if (len < 4 || (buf[0] & 0xC0) != 0x40) return null;
            Coap m = new Coap();
            int tkl = buf[0] & 0x0F;
            if (tkl > 8 || 4 + tkl > len) return null;
            m.type = (buf[0] >> 4) & 0x03;
            m.code = buf[1] & 0xFF;
            m.mid = ((buf[2] & 0xFF) << 8) | (buf[3] & 0xFF);
            m.token = java.util.Arrays.copyOfRange(buf, 4, 4 + tkl);
            int i = 4 + tkl;
            while (i < len) {
                int b = buf[i++] & 0xFF;
                if (b == 0xFF) {
                    if (i == len) return null;
                    m.payload = java.util.Arrays.copyOfRange(buf, i, len);
                    return m;
                }
                int delta = b >> 4, length = b & 0x0F;
                if (delta == 15 || length == 15) return null;
                if (delta == 13) { if (i >= len) return null; i += 1; }
                else if (delta == 14) { if (i + 1 >= len) return null; i += 2; }
                if (length == 13) { if (i >= len) return null; length = (buf[i++] & 0xFF) + 13; }
                else if (length == 14) {
                    if (i + 1 >= len) return null;
                    length = (((buf[i] & 0xFF) << 8) | (buf[i + 1] & 0xFF)) + 269;
                    i += 2;
                }
                i += length;
                if (i > len) return null;
            }
            return m;
        }

        String codeText() {
            return (code >> 5) + "." + String.format("%02d", code & 0x1F);
        }
    }

    /** One CON GET over the DTLS session; prints "response N: ..." and the payload. */
    static boolean get(DTLSTransport dtls, int n, String path) throws IOException {
        int mid = RANDOM.nextInt(0x10000);
        byte[] token = new byte[4];
        RANDOM.nextBytes(token);
        byte[] request = coapGet(mid, token, path);
        byte[] buf = new byte[dtls.getReceiveLimit()];
        for (int transmission = 0; transmission < TRANSMISSIONS; transmission++) {
            dtls.send(request, 0, request.length);
            long deadline = System.nanoTime() + RESPONSE_TIMEOUT_MS * 1_000_000L;
            long left;
            while ((left = (deadline - System.nanoTime()) / 1_000_000L) > 0) {
                int len = dtls.receive(buf, 0, buf.length, (int) Math.max(1, left));
                if (len < 0) continue;
                Coap reply = Coap.parse(buf, len);
                if (reply == null) {
                    System.out.println("response " + n + ": not CoAP, " + len + " bytes");
                    printPayload(n, java.util.Arrays.copyOf(buf, len));
                    return true;
                }
                if (!java.util.Arrays.equals(reply.token, token)) {
                    if (reply.type == 2 && reply.code == 0 && reply.mid == mid) {
                        System.out.println("empty ACK " + n + ": separate response follows");
                        deadline = System.nanoTime() + 3L * RESPONSE_TIMEOUT_MS * 1_000_000L;
                        transmission = TRANSMISSIONS; // no more retransmissions
                    }
                    continue;
                }
                if (reply.type == 0) { // a separate CON response: acknowledge it
                    byte[] ack = {(byte) 0x60, 0, (byte) (reply.mid >> 8), (byte) reply.mid};
                    dtls.send(ack, 0, ack.length);
                }
                System.out.println("response " + n + ": " + reply.codeText() + " mid=0x"
                        + String.format("%04x", reply.mid) + " bytes=" + reply.payload.length);
                printPayload(n, reply.payload);
                return true;
            }
        }
        System.out.println("response " + n + ": none (no answer to GET /" + path + " after "
                + TRANSMISSIONS + " transmissions)");
        return false;
    }

    static void printPayload(int n, byte[] payload) {
        System.out.println("--- payload " + n + " ---");
        System.out.println(new String(payload, StandardCharsets.UTF_8));
        System.out.println("--- end " + n + " ---");
    }

    static byte[] hex(String s) {
        if (s.length() % 2 != 0) throw new IllegalArgumentException("odd hex length: " + s);
        byte[] out = new byte[s.length() / 2];
        for (int i = 0; i < out.length; i++) {
            out[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
        }
        return out;
    }

    static String hex(byte[] b) {
        if (b == null) return "none";
        StringBuilder sb = new StringBuilder();
        for (byte x : b) sb.append(String.format("%02x", x));
        return sb.toString();
    }

    public static void main(String[] args) throws Exception {
        List<String> rest = new ArrayList<>();
        boolean rebind = false;
        for (int i = 5; i < args.length; i++) {
            if (args[i].equals("rebind")) rebind = true;
            else rest.add(args[i]);
        }
        if (args.length < 6 || rest.isEmpty() || rest.size() > 2) {
            System.err.println("usage: BcCidClient HOST PORT IDENTITY PSK_HEX CID_HEX|\"\"|none [rebind] PATH [PATH2]");
            System.exit(2);
        }
        InetSocketAddress server = new InetSocketAddress(args[0], Integer.parseInt(args[1]));
        byte[] cid = args[4].equals("none") ? null : hex(args[4]);
        String path1 = rest.get(0);
        String path2 = rest.size() > 1 ? rest.get(1) : rebind ? path1 : null;

        SwappableUdpTransport udp = new SwappableUdpTransport(server);
        CidPskClient client = new CidPskClient(args[2], hex(args[3]), cid);
        DTLSTransport dtls;
        long start = System.nanoTime();
        try {
            dtls = new DTLSClientProtocol().connect(client, udp);
        } catch (IOException e) {
            System.out.println("handshake: FAILED " + e);
            udp.close();
            System.exit(3);
            return;
        }
        SecurityParameters sp = client.clientContext().getSecurityParametersConnection();
        System.out.println(String.format("handshake: ok in %.1f ms, version=%s, suite=0x%04x",
                (System.nanoTime() - start) / 1e6, sp.getNegotiatedVersion(), sp.getCipherSuite()));
        System.out.println("cid-receive: " + hex(sp.getConnectionIDPeer()));
        System.out.println("cid-send: " + hex(sp.getConnectionIDLocal()));
        System.out.println("bc-security-parameters: connectionIDLocal=" + hex(sp.getConnectionIDLocal())
                + " connectionIDPeer=" + hex(sp.getConnectionIDPeer()));
        System.out.println("local-port: " + udp.localPort());

        boolean ok = get(dtls, 1, path1);
        if (path2 != null) {
            if (rebind) {
                int before = udp.localPort();
                int after = udp.rebind();
                System.out.println("rebind: local port " + before + " -> " + after);
            }
            ok &= get(dtls, 2, path2);
        }
        dtls.close(); // close_notify
        System.exit(ok ? 0 : 4);
    }
}
