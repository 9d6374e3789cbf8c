// The one function of `qrcode` (its browser build) the portal uses. Declared here rather than taken from
// @types/qrcode, whose Node typings (streams, Buffers) come with it and clash with the DOM stream types the
// console relies on.
declare module 'qrcode' {
  interface QRCodeToDataURLOptions {
    margin?: number
    width?: number
    errorCorrectionLevel?: 'L' | 'M' | 'Q' | 'H'
  }
  const QRCode: { toDataURL(text: string, options?: QRCodeToDataURLOptions): Promise<string> }
  export default QRCode
}
